"""Bounded load test of `gradmem serve` on loopback.

Starts the service as a subprocess (the real CLI) with a fresh store, runs C concurrent clients
for a fixed number of requests (a mix of writes of new key-value contexts and batched questions
about the written memories), then stops. Prints throughput and p50/p95 latency, checks that no
request failed and no memory was lost (every written id is listed, readable and answerable, also
after restarting the server on the same store), and writes results/service/load_test.{json,md}.

    python benchmarks/load_test.py --checkpoint runs/demo/gradmem/best --clients 8 --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from gradmem.run.checkpoint import load_spec
from gradmem.tasks.kv import KVConfig, sample_kv_strings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, store: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [
        sys.executable,
        "-m",
        "gradmem.cli",
        "serve",
        args.checkpoint,
        "--store",
        store,
        "--port",
        str(port),
        "--stop",
        "|",
        "--rate",
        "100000",
        "--burst",
        "100000",
        "--max-batch",
        str(args.max_batch),
        "--batch-wait-ms",
        str(args.batch_wait_ms),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read() if proc.stderr else ''}")
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run_load(base: str, args: argparse.Namespace, kv: KVConfig) -> dict:
    rng = random.Random(args.seed)
    written: dict[str, list[tuple[str, str]]] = {}  # memory id -> (query, target) pairs of its context
    records: list[dict] = []
    counter = {"next": 0}
    lock = asyncio.Lock()

    async def write(client: httpx.AsyncClient) -> None:
        context = sample_kv_strings(kv, rng)[0]
        # every pair of the context is a possible question: rebuild them from the context text
        body = context.strip("|").strip("!").split("!!")
        qa = [(f"?!{p.split(':')[0]}:", f"{p.split(':')[1]}!|") for p in body]
        started = time.perf_counter()
        r = await client.post("/v1/memories", json={"text": context})
        records.append({"kind": "write", "status": r.status_code, "seconds": time.perf_counter() - started})
        if r.status_code == 201:
            written[r.json()["id"]] = qa

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

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(args.clients)))
    return {"records": records, "seconds": time.perf_counter() - started, "written": written}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--write-share", type=float, default=0.1, help="share of requests that write a new context")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/service")
    args = parser.parse_args()

    spec = load_spec(args.checkpoint)
    kv = KVConfig(**{k: v for k, v in spec["task"].items() if k != "name"})
    store = tempfile.mkdtemp(prefix="gradmem-load-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args, store, port)
    try:
        result = asyncio.run(run_load(base, args, kv))
        health = httpx.get(f"{base}/health", timeout=10).json()
        limits = httpx.get(f"{base}/version", timeout=10).json()["limits"]  # the budgets the run was served under
        lost = check_memories(base, result["written"])
    finally:
        stop_server(proc)
    proc = start_server(args, store, port)  # the store must survive a restart
    try:
        lost_after_restart = check_memories(base, result["written"])
    finally:
        stop_server(proc)

    records = result["records"]
    failed = [r for r in records if r["status"] >= 300]
    asks = [r for r in records if r["kind"] == "ask" and r["status"] == 200]
    questions = sum(r["questions"] for r in asks)
    summary = {
        "checkpoint": args.checkpoint,
        "clients": args.clients,
        "requests": len(records),
        "seconds": round(result["seconds"], 2),
        "requests_per_second": round(len(records) / result["seconds"], 1),
        "questions_per_second": round(questions / result["seconds"], 1),
        "latency": [summarise("all", records)]
        + [
            summarise(k, [r for r in records if r["kind"] == k])
            for k in ("write", "ask")
            if any(r["kind"] == k for r in records)
        ],
        "failed_requests": len(failed),
        "memories_written": len(result["written"]),
        "memories_lost": lost,
        "memories_lost_after_restart": lost_after_restart,
        "served_answer_accuracy": round(sum(r["correct"] for r in asks) / max(questions, 1), 4),
        "batches": health["batches"],
        "jobs": health["jobs"],
        "largest_batch": health["largest_batch"],
        "mean_batch": round(health["jobs"] / max(health["batches"], 1), 2),
        "server_torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "timed_out": health.get("timed_out"),
        "refused_busy": health.get("refused_busy"),
        "limits": limits,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_test.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# Load test: {args.clients} clients, {len(records)} requests, loopback\n",
        f"Command: `python benchmarks/load_test.py --checkpoint {args.checkpoint} --clients {args.clients} "
        f"--requests {args.requests}`\n",
        f"- throughput: {summary['requests_per_second']} requests/s ({summary['questions_per_second']} questions/s) "
        f"over {summary['seconds']} s",
        f"- failed requests: {len(failed)}; memories written {len(result['written'])}, lost {len(lost)}, "
        f"lost after restart {len(lost_after_restart)}",
        f"- batching: {health['jobs']} jobs in {health['batches']} model batches (mean {summary['mean_batch']}, "
        f"largest {health['largest_batch']})",
        f"- served answers correct (value exact match): {summary['served_answer_accuracy']:.3f}\n",
        "| requests | n | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['kind']} | {s['requests']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |" for s in summary["latency"]
    ]
    (out / "load_test.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = not failed and not lost and not lost_after_restart
    print(
        "PASS"
        if ok
        else "FAIL: "
        + json.dumps({"failed": failed[:5], "lost": lost[:5], "lost_after_restart": lost_after_restart[:5]})
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
