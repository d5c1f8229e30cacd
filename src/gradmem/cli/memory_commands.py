"""The memory commands of the `gradmem` command line: write, ask, inspect, store, serve.

    gradmem write CKPT --context story.txt [--store DIR] [--out mem/story] [--target-loss 0.1]
    gradmem ask CKPT MEMORY -q "?!ab:" -q "?!cd:"        MEMORY: a store id or a memory file path
    gradmem inspect CKPT MEMORY [--context story.txt]     loss curve + greedy reconstruction from memory
    gradmem store list | show ID | delete ID | clean [--store DIR]
    gradmem serve CKPT [--store DIR] [--port 8000] [--api-key KEY | $GRADMEM_API_KEY] [--trust-proxy]

The store defaults to $GRADMEM_STORE, else ~/.cache/gradmem/store. Errors are typed (gradmem.core.errors)
and reach the user as one line from `gradmem.cli.main`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gradmem.cli.options import add_options, from_args
from gradmem.core.bounded_io import TEXT_LIMIT, decode, read_limited_text, read_stream
from gradmem.core.device import device_option
from gradmem.core.errors import InvalidInput, NotFound
from gradmem.core.files import atomic_copy
from gradmem.core.memory import Memory
from gradmem.serve.engine import Engine, EngineConfig, TaskText
from gradmem.serve.store import MemoryStore

ASK_BATCH = 256  # questions per batched decode of `gradmem ask` (a long question file runs in several)


def add_device_option(p: argparse.ArgumentParser) -> None:
    """`--device`, shared by every command that runs a model."""
    p.add_argument(
        "--device",
        type=device_option,
        default="auto",
        help="where the model runs: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N",
    )


def default_store() -> str:
    return os.environ.get("GRADMEM_STORE") or str(Path.home() / ".cache" / "gradmem" / "store")


def open_engine(args: argparse.Namespace) -> Engine:
    from gradmem.core.device import resolve_device
    from gradmem.run.checkpoint import load_checkpoint

    model, task, _ = load_checkpoint(args.checkpoint, resolve_device(args.device))
    config = from_args(EngineConfig, args)
    return Engine(model, task.tokenizer, MemoryStore(args.store), config, TaskText.of(task))


def resolve_memory(engine: Engine, ref: str) -> tuple[Memory, dict[str, Any], str | None]:
    """(memory, sidecar, stored context) for a store id or a memory file path."""
    from gradmem.core.memory_file import load_memory

    if ref in engine.store:
        return engine.memory(ref), engine.store.show(ref), engine.store.context(ref)
    if not Path(ref).with_suffix(".json").exists() and not Path(ref + ".json").exists():
        raise NotFound(f"{ref!r} is neither a memory id in {engine.store.root} nor a memory file")
    memory, meta = load_memory(ref, engine.model, engine.fingerprint)
    return memory, meta, None


def read_context(source: str) -> str:
    """A context from a file, or from stdin for "-", bounded (gradmem.core.bounded_io)."""
    if source != "-":
        return read_limited_text(source, TEXT_LIMIT, f"context file {source}")
    stream = getattr(sys.stdin, "buffer", sys.stdin)  # bytes where stdin has them (a test may swap in text)
    return decode(read_stream(stream, TEXT_LIMIT, "the context on stdin"), "the context on stdin")


def cmd_write(args: argparse.Namespace) -> int:
    from gradmem.core.memory_file import memory_paths

    text = read_context(args.context).strip()  # before the model loads: a bad input fails at once
    engine = open_engine(args)
    total = engine.settings(args.steps, args.lr, args.target_loss)["steps"]

    def progress(_: int, step: int, loss: float) -> None:
        if not args.quiet:
            label = f"step {step}/{total}" if step < total else "final"
            print(
                f"write {label:>9}  reconstruction loss {loss:.4f}  {'#' * max(1, round(loss * 10))}",
                file=sys.stderr,
                flush=True,
            )

    [result] = engine.write_texts([text], args.steps, args.lr, args.target_loss, on_step=progress)
    if not args.quiet:
        kept = "already in the store, nothing to compute" if not result.created else "kept in the store"
        print(f"write: memory {result.id} {kept} ({args.store})", file=sys.stderr)
    tensor, side = memory_paths(engine.store.path(result.id))
    path = tensor
    if args.out:
        out_tensor, out_side = memory_paths(args.out)
        out_tensor.parent.mkdir(parents=True, exist_ok=True)
        for source, target in ((tensor, out_tensor), (side, out_side)):  # each file whole or not at all
            atomic_copy(source, target)
        path = out_tensor
    meta = result.meta
    print(
        json.dumps(
            {
                "id": result.id,
                "created": result.created,
                "memory": str(path),
                "context_tokens": meta["context_tokens"],
                "blocks": meta["blocks"],
                "write_loss": meta["write_loss"],
                "final_write_loss": meta["final_write_loss"],
                "steps_taken": meta["steps_taken"],
                "memory_bytes": meta["memory_bytes"],
                "kv_cache_bytes": meta["kv_cache_bytes"],
            }
        )
    )
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    ref = args.memory_ref or args.memory
    if not ref:
        raise InvalidInput("give a memory (store id or file path)")
    queries = list(args.queries)
    if args.queries_file:
        text = read_limited_text(args.queries_file, TEXT_LIMIT, f"queries file {args.queries_file}")
        queries += [q.strip() for q in text.splitlines() if q.strip()]
    if not queries:
        raise InvalidInput("give at least one query")
    engine = open_engine(args)
    memory, _, _ = resolve_memory(engine, ref)
    for start in range(0, len(queries), ASK_BATCH):  # batched decodes of a bounded size
        batch = queries[start : start + ASK_BATCH]
        for query, answer in zip(batch, engine.answer([(memory, q) for q in batch], args.max_new_tokens)):
            print(json.dumps({"query": query, "answer": answer}))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    given = (
        read_limited_text(args.context, TEXT_LIMIT, f"context file {args.context}").strip() if args.context else None
    )
    engine = open_engine(args)
    memory, meta, context = resolve_memory(engine, args.memory)
    context = given if given is not None else context
    report = engine.reconstruct_memory(memory, meta, context)
    if args.json:
        print(json.dumps(report))
        return 0
    curve = report["write_loss"] + ([report["final_write_loss"]] if report["final_write_loss"] is not None else [])
    top = max(curve) if curve else 1.0
    print(
        f"memory {report['id'] or args.memory}: {meta['num_vectors']} vectors x {meta['hidden_size']} "
        f"({report['blocks']} block(s)), {report['memory_bytes']} bytes; a full-context KV cache would be "
        f"{report['kv_cache_bytes']} bytes"
    )
    print("reconstruction loss per write step:")
    for step, loss in enumerate(curve):
        label = (
            f"after {step - 1}"
            if step == len(curve) - 1 and report["final_write_loss"] is not None
            else f"before {step}"
        )
        print(f"  {label:>9}  {loss:8.4f}  {'#' * max(1, round(40 * loss / top))}")
    # The decode is framed and labelled: read as "the context back", a poor one looked like data loss.
    print(f"{report['reconstruction_note']}:")
    if report.get("context") is not None:
        print(
            f"  greedy token accuracy {report['token_accuracy']:.3f}, teacher-forced accuracy "
            f"{report['teacher_forced_accuracy']:.3f} (against the context below)"
        )
    else:
        print("  accuracy unknown: no context is stored with this memory (pass --context FILE)")
    print(f"  [{report['reconstruction']}]")
    if report.get("context") is not None:
        print("the context that was written:")
        print(f"  [{report['context']}]")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    store = MemoryStore(args.store)
    if args.action == "list":
        items, damaged = store.scan()
        for meta in items:
            print(
                json.dumps(
                    {
                        k: meta.get(k)
                        for k in ("id", "created", "context_tokens", "blocks", "num_vectors", "final_write_loss")
                    }
                )
            )
        for item in damaged:  # reported, never fatal: one bad memory must not hide the others
            print(f"gradmem store list: skipped {item['damaged']}", file=sys.stderr)
    elif args.action == "clean":
        print(json.dumps({"removed": store.clean()}))
    else:
        if not args.id:
            raise InvalidInput(f"store {args.action} needs a memory id")
        if args.action == "show":
            print(json.dumps(store.show(args.id), indent=2))
        elif not store.delete(args.id):
            raise NotFound(f"no memory {args.id!r} in {store.root}")
        else:
            print(json.dumps({"deleted": args.id}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gradmem.serve.budget import Budget
    from gradmem.serve.service import ServiceConfig, create_app, server_config

    # An empty --api-key or $GRADMEM_API_KEY is refused (by ServiceConfig), not read as "no key":
    # a typo must not start an open server. Checked before the model loads.
    key = args.api_key if args.api_key is not None else os.environ.get("GRADMEM_API_KEY")
    cfg = from_args(
        ServiceConfig,
        args,
        budget=from_args(Budget, args),
        max_new_tokens=max(ServiceConfig.max_new_tokens, args.max_new_tokens),  # the default must pass
        api_key=key,
        allowed_hosts=allowed_hosts(args),
    )
    engine = open_engine(args)
    app = create_app(engine, cfg, checkpoint=Path(args.checkpoint).name)
    access = (
        "API key required for writes" + (" and reads" if cfg.protect_reads else "") if cfg.api_key else "no API key"
    )
    print(
        f"gradmem serve: http://{args.host}:{args.port}/  (store {args.store}, {access}, API docs at /docs)",
        file=sys.stderr,
    )
    uvicorn.Server(server_config(app, args.host, args.port, args.trust_proxy, args.log_level, cfg)).run()
    return 0


def allowed_hosts(args: argparse.Namespace) -> str | None:
    """--allowed-hosts, or for a server bound to loopback the loopback names: a browser's page from
    another site then cannot reach it by pointing its own domain at 127.0.0.1 (DNS rebinding)."""
    from gradmem.serve.page_security import LOOPBACK_HOSTS

    if args.allowed_hosts is not None:
        return args.allowed_hosts
    return LOOPBACK_HOSTS if args.host in LOOPBACK_HOSTS.split(",") else None


def _serve_options(p: argparse.ArgumentParser) -> None:
    from gradmem.serve.budget import Budget
    from gradmem.serve.service import ServiceConfig

    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    add_options(p, EngineConfig, only=["max_new_tokens", "stop"])
    # max_new_tokens is the engine's default answer length; the service's cap is never below it.
    add_options(
        p,
        ServiceConfig,
        skip=["max_new_tokens"],
        aliases={
            "rate_per_second": "--rate",
            "rate_burst": "--burst",
            "request_timeout_s": "--request-timeout",
            "body_timeout_s": "--body-timeout",
            "header_timeout_s": "--header-timeout",
        },
        help_extra={
            "api_key": "(better: set $GRADMEM_API_KEY, which other users cannot see in the process list)",
            "allowed_hosts": "(default for a loopback --host: localhost,127.0.0.1,::1)",
        },
    )
    add_options(p, Budget)
    p.add_argument(
        "--trust-proxy",
        nargs="?",
        const="127.0.0.1",
        default=None,
        metavar="IPS",
        help="rate-limit by X-Forwarded-For from these proxy addresses (default 127.0.0.1); "
        "without it, by the socket peer",
    )
    p.add_argument("--log-level", default="warning")


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint folder (spec.json + model.safetensors)")
    p.add_argument(
        "--store",
        default=default_store(),
        help="memory store directory (default: $GRADMEM_STORE or ~/.cache/gradmem/store)",
    )
    add_options(p, EngineConfig, only=["max_blocks", "chunk_tokens"])
    add_device_option(p)


def add_memory_commands(sub: argparse._SubParsersAction) -> None:
    """Register write / ask / inspect / store / serve on the `gradmem` sub-parser."""
    p = sub.add_parser("write", help="write a context (file or stdin) into a memory in the store")
    _engine_options(p)
    p.add_argument("--context", default="-", help="text file, or - for stdin (default)")
    p.add_argument("--out", default=None, help="also copy the memory files here (PATH.safetensors + PATH.json)")
    p.add_argument("--steps", type=int, default=None, help="maximum WRITE steps K (default: the checkpoint's)")
    p.add_argument("--lr", type=float, default=None, help="inner lr (default: the checkpoint's)")
    p.add_argument("--target-loss", type=float, default=None, help="stop a chunk once its reconstruction loss <= this")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_write)

    p = sub.add_parser("ask", help="answer questions from a memory (the context is not needed)")
    _engine_options(p)
    p.add_argument("memory_ref", nargs="?", default=None, help="a store id or a memory file path")
    p.add_argument("--memory", default=None, help="same as the positional MEMORY")
    p.add_argument("-q", "--query", dest="queries", action="append", default=[], help="a question (repeatable)")
    p.add_argument("--queries-file", default=None, help="one question per line")
    add_options(p, EngineConfig, only=["max_new_tokens", "stop"], help_extra={"stop": "(e.g. '|' for key-value)"})
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("inspect", help="fidelity of a memory: loss curve and the context decoded from it")
    _engine_options(p)
    p.add_argument("memory", help="a store id or a memory file path")
    p.add_argument("--context", default=None, help="the original text, to score the reconstruction")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("store", help="list / show / delete memories in a store, clean crash leftovers")
    p.add_argument("action", choices=["list", "show", "delete", "clean"])
    p.add_argument("id", nargs="?", default=None)
    p.add_argument("--store", default=default_store())
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("serve", help="serve a checkpoint and a store over HTTP (API + web page)")
    _engine_options(p)
    _serve_options(p)
    p.set_defaults(func=cmd_serve)
