"""Bounded load test of `gradmem serve` on loopback.

Starts the service as a subprocess (the real CLI) with a fresh store, runs C concurrent clients
for a fixed number of requests (a mix of writes of new key-value contexts and batched questions
about the written memories), then stops. Prints throughput and p50/p95 latency, checks that no
request failed and no memory was lost (every written id is listed, readable and answerable, also
after restarting the server on the same store), and writes results/service/<name>.{json,md}. The
server's resident memory (RSS) is sampled throughout.

Two harder loads (hardening, issue 29): `--pairs 1-64` writes contexts of many distinct lengths
(resident memory must stay flat), and `--reconstruct` keeps one more client decoding the longest
memory back into text (the costliest request there is) while the others ask and write.

    python benchmarks/load_test.py --checkpoint runs/demo/gradmem/best --clients 8 --requests 400
    python benchmarks/load_test.py --checkpoint checkpoints/kv16 --pairs 1-64 --reconstruct --name load_test_hard
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import save_results  # noqa: E402
from servekit import free_port, rss_mib, start_server, stop_server  # noqa: E402

from gradmem.core.device import cpu_model_name  # noqa: E402
from gradmem.run.checkpoint import load_spec  # noqa: E402
from gradmem.tasks.kv import KVConfig, sample_kv_strings  # noqa: E402


async def sample_rss(pid: int, samples: list[float], every_s: float = 0.25) -> None:
    """Append the server's RSS to `samples` every `every_s` seconds until cancelled."""
    while True:
        samples.append(rss_mib(pid))
        await asyncio.sleep(every_s)


def pair_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    lo, hi = int(low), int(high or low)
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"--pairs wants N or LOW-HIGH with 1 <= LOW <= HIGH, got {text!r}")
    return lo, hi


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run_load(base: str, args: argparse.Namespace, kv: KVConfig, server_pid: int) -> dict:
    rng = random.Random(args.seed)
    lengths = {}  # memory id -> context characters (the longest is the one reconstructed)
    done = asyncio.Event()
    written: dict[str, list[tuple[str, str]]] = {}  # memory id -> (query, target) pairs of its context
    records: list[dict] = []
    counter = {"next": 0}
    lock = asyncio.Lock()

    async def write(client: httpx.AsyncClient) -> None:
        pairs = rng.randint(*args.pairs) if args.pairs else kv.num_pairs
        context = sample_kv_strings(dataclasses.replace(kv, num_pairs=pairs), rng)[0]
        # every pair of the context is a possible question: rebuild them from the context text
        body = context.strip("|").strip("!").split("!!")
        qa = [(f"?!{p.split(':')[0]}:", f"{p.split(':')[1]}!|") for p in body]
        started = time.perf_counter()
        r = await client.post("/v1/memories", json={"text": context})
        records.append({"kind": "write", "status": r.status_code, "seconds": time.perf_counter() - started})
        if r.status_code == 201:
            written[r.json()["id"]] = qa
            lengths[r.json()["id"]] = len(context)

    async def reconstruct_loop() -> None:  # the costliest request, over and over, while the load runs
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            while not done.is_set():
                if not lengths:
                    await asyncio.sleep(0.05)
                    continue
                longest = max(lengths, key=lengths.get)
                started = time.perf_counter()
                r = await client.get(f"/v1/memories/{longest}/reconstruction")
                seconds = time.perf_counter() - started
                records.append({"kind": "reconstruction", "status": r.status_code, "seconds": seconds})

    async def ask(client: httpx.AsyncClient) -> None:
        memory_id = rng.choice(sorted(written))
        qa = rng.sample(written[memory_id], rng.randint(1, min(4, len(written[memory_id]))))
        started = time.perf_counter()
        r = await client.post(f"/v1/memories/{memory_id}/ask", json={"questions": [q for q, _ in qa]})
        seconds = time.perf_counter() - started
        correct = 0
        if r.status_code == 200:
            answers = [a["answer"] for a in r.json()["answers"]]
            correct = sum(a[: kv.value_len] == t[: kv.value_len] for a, (_, t) in zip(answers, qa))
        records.append(
            {"kind": "ask", "status": r.status_code, "seconds": seconds, "questions": len(qa), "correct": correct}
        )

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            while True:
                async with lock:
                    if counter["next"] >= args.requests:
                        return
                    counter["next"] += 1
                if not written or rng.random() < args.write_share:
                    await write(client)
                else:
                    await ask(client)

    rss: list[float] = []
    sampler = asyncio.create_task(sample_rss(server_pid, rss))
    side = asyncio.create_task(reconstruct_loop()) if args.reconstruct else None
    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(args.clients)))
    seconds = time.perf_counter() - started
    done.set()
    if side is not None:
        await side
    sampler.cancel()
    return {"records": records, "seconds": seconds, "written": written, "rss_mib": rss}


def listed_ids(base: str) -> set[str]:
    """Every memory id the server lists, page after page."""
    ids: set[str] = set()
    offset = 0
    while True:
        page = httpx.get(f"{base}/v1/memories", params={"offset": offset, "limit": 1000}, timeout=60).json()
        ids.update(m["id"] for m in page["memories"])
        offset += page["limit"]
        if offset >= page["total"]:
            return ids


def check_memories(base: str, written: dict) -> list[str]:
    """Problems found: ids missing from the list, unreadable, or not answerable."""
    problems = []
    listed = listed_ids(base)
    for memory_id, qa in written.items():
        if memory_id not in listed:
            problems.append(f"{memory_id} not listed")
        elif httpx.get(f"{base}/v1/memories/{memory_id}", timeout=60).status_code != 200:
            problems.append(f"{memory_id} not readable")
        elif (
            httpx.post(f"{base}/v1/memories/{memory_id}/ask", json={"questions": [qa[0][0]]}, timeout=60).status_code
            != 200
        ):
            problems.append(f"{memory_id} not answerable")
    return problems


def summarise(kind: str, records: list[dict]) -> dict:
    seconds = [r["seconds"] * 1000 for r in records]
    return {
        "kind": kind,
        "requests": len(records),
        "p50_ms": round(statistics.median(seconds), 2),
        "p95_ms": round(percentile(seconds, 0.95), 2),
        "max_ms": round(max(seconds), 2),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--write-share", type=float, default=0.1, help="share of requests that write a new context")
    parser.add_argument(
        "--pairs", type=pair_range, default=None, help="pairs per written context, N or LOW-HIGH (default: trained)"
    )
    parser.add_argument("--reconstruct", action="store_true", help="one more client reconstructs the longest memory")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="load_test", help="results file name")
    parser.add_argument("--out", default="results/service")
    return parser.parse_args()


def command_line(args: argparse.Namespace) -> str:
    extra = (f" --pairs {args.pairs[0]}-{args.pairs[1]}" if args.pairs else "") + (
        " --reconstruct" if args.reconstruct else ""
    )
    extra += f" --write-share {args.write_share:g}" if args.write_share != 0.1 else ""
    name = f" --name {args.name}" if args.name != "load_test" else ""
    return (
        f"python benchmarks/load_test.py --checkpoint {args.checkpoint} --clients {args.clients} "
        f"--requests {args.requests}{extra}{name}"
    )


def summarise_run(args: argparse.Namespace, result: dict, health: dict, limits: dict, lost: dict) -> dict:
    records = result["records"]
    failed = [r for r in records if r["status"] >= 300]
    asks = [r for r in records if r["kind"] == "ask" and r["status"] == 200]
    questions = sum(r["questions"] for r in asks)
    rss = result["rss_mib"]
    kinds = [k for k in ("write", "ask", "reconstruction") if any(r["kind"] == k for r in records)]
    return {
        "command": command_line(args),
        "checkpoint": args.checkpoint,
        "clients": args.clients,
        "requests": len(records),
        "seconds": round(result["seconds"], 2),
        "requests_per_second": round(len(records) / result["seconds"], 1),
        "questions_per_second": round(questions / result["seconds"], 1),
        "latency": [summarise("all", records)] + [summarise(k, [r for r in records if r["kind"] == k]) for k in kinds],
        "failed_requests": len(failed),
        "failed_examples": failed[:5],
        "memories_written": len(result["written"]),
        "memories_lost": lost["now"],
        "memories_lost_after_restart": lost["after_restart"],
        "served_answer_accuracy": round(sum(r["correct"] for r in asks) / max(questions, 1), 4),
        "pairs_per_context": list(args.pairs) if args.pairs else None,
        "server_rss_mib": {"first": round(rss[0], 1), "peak": round(max(rss), 1), "last": round(rss[-1], 1)},
        "batches": health["batches"],
        "jobs": health["jobs"],
        "largest_batch": health["largest_batch"],
        "mean_batch": round(health["jobs"] / max(health["batches"], 1), 2),
        "server_torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model_name(),
        "timed_out": health.get("timed_out"),
        "refused_busy": health.get("refused_busy"),
        "limits": limits,
    }


def report(summary: dict) -> list[str]:
    rss = summary["server_rss_mib"]
    lines = [
        f"# Load test: {summary['clients']} clients, {summary['requests']} requests, loopback\n",
        f"Command: `{summary['command']}` (CPU: {summary['cpu']}, server on {summary['server_torch_threads']} "
        "torch thread)\n",
        f"- throughput: {summary['requests_per_second']} requests/s ({summary['questions_per_second']} questions/s) "
        f"over {summary['seconds']} s",
        f"- failed requests: {summary['failed_requests']}; memories written {summary['memories_written']}, "
        f"lost {len(summary['memories_lost'])}, lost after restart {len(summary['memories_lost_after_restart'])}",
        f"- batching: {summary['jobs']} jobs in {summary['batches']} model batches (mean {summary['mean_batch']}, "
        f"largest {summary['largest_batch']})",
        f"- server resident memory: {rss['first']} MiB at the start, peak {rss['peak']}, {rss['last']} at the end",
        f"- served answers correct (value exact match): {summary['served_answer_accuracy']:.3f}\n",
        "| requests | n | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    return lines + [
        f"| {s['kind']} | {s['requests']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |" for s in summary["latency"]
    ]


def main() -> int:
    args = parse_args()
    spec = load_spec(args.checkpoint)
    kv = KVConfig(**{k: v for k, v in spec["task"].items() if k != "name"})
    store = tempfile.mkdtemp(prefix="gradmem-load-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args, store, port)
    try:
        result = asyncio.run(run_load(base, args, kv, proc.pid))
        health = httpx.get(f"{base}/health", timeout=10).json()
        limits = httpx.get(f"{base}/version", timeout=10).json()["limits"]  # the budgets the run was served under
        lost = {"now": check_memories(base, result["written"])}
    finally:
        stop_server(proc)
    proc = start_server(args, store, port)  # the store must survive a restart
    try:
        lost["after_restart"] = check_memories(base, result["written"])
    finally:
        stop_server(proc)

    summary = summarise_run(args, result, health, limits, lost)
    lines = report(summary)
    save_results(Path(args.out), args.name, summary, "\n".join(lines))
    print("\n".join(lines))
    ok = not summary["failed_requests"] and not lost["now"] and not lost["after_restart"]
    print("PASS" if ok else "FAIL: " + json.dumps({"failed": summary["failed_examples"], "lost": lost}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
