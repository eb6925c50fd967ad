"""Soak: hundreds of streamed requests against one `lcpp-zh serve`, a quarter of the clients hanging up
mid-stream, and what is left afterwards.

Prints errors (any status other than 200, any error event, any stream that ended without [DONE] when its
client did not hang up), memory growth of the server and its runner between the warm-up and the end, and
the slots still busy and requests still queued once the load is gone; targets 0, < 5 % and 0. Traffic goes
to 127.0.0.1 only; the run is bounded by --requests and --max-seconds. A benchmark: it asserts nothing.

    python benchmarks/soak_bench.py [--model M.gguf] [--requests 400] [--clients 8] [--hangup 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures import cache_root  # noqa: E402
from fixtures.smollm2 import GGUF_NAME  # noqa: E402
from lcpp_zh.common.net import free_port, wait_http_ready  # noqa: E402

# The SmolLM2 GGUF of the test fixtures (in the platform's user cache folder, or $LCPP_ZH_TEST_CACHE).
DEFAULT_MODEL = cache_root() / "smollm2" / GGUF_NAME
PROMPTS = ["Tell me about tea.", "用三句话介绍长城。", "Write a haiku about rain.", "解释一下什么是机器学习。",
           "List five fruits.", "讲一个关于月亮的故事。", "How do rivers form?", "写一首关于春天的短诗。"]


@dataclass
class Tally:
    done: int = 0
    hung_up: int = 0
    errors: int = 0
    tokens: int = 0


def tree_rss(pid: int) -> int:
    """Resident memory of the server and its runner processes, in bytes."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def metric(base: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.split()[-1])
    return total


async def one_request(client: httpx.AsyncClient, base: str, i: int, hang_up: bool, max_tokens: int,
                      tally: Tally, rng: random.Random) -> None:
    body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens,
            "stream": True, "temperature": 0.8, "seed": i}
    cut_after = rng.randint(1, 6)
    chunks = 0
    try:
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                tally.errors += 1
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    tally.done += 1
                    return
                payload = json.loads(line[6:])
                if "error" in payload:
                    tally.errors += 1
                    return
                chunks += 1
                tally.tokens += 1
                if hang_up and chunks >= cut_after:
                    tally.hung_up += 1
                    return  # leaving the block closes the connection mid-stream
            tally.errors += 1  # the stream ended without [DONE]
    except httpx.HTTPError:
        tally.errors += 1


async def soak(base: str, requests: int, clients: int, hangup: float, max_tokens: int, max_seconds: float) -> Tally:
    tally, rng = Tally(), random.Random(20261202)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            while not queue.empty() and time.monotonic() < deadline:
                i = queue.get_nowait()
                await one_request(client, base, i, rng.random() < hangup, max_tokens, tally, rng)

    await asyncio.gather(*[worker() for _ in range(clients)])
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--hangup", type=float, default=0.25, help="share of clients that hang up mid-stream")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=1200)
    args = parser.parse_args()
    lcpp = shutil.which("lcpp-zh", path=str(Path(sys.executable).parent)) or "lcpp-zh"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="soak-", suffix=".log", delete=False)
    server = subprocess.Popen([lcpp, "serve", str(args.model), "--port", str(port), "--parallel", "4",
                               "--ctx", "2048", "--threads", str(args.threads), "--no-embeddings"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http_ready(f"{base}/health", 300, process=server, interval=0.3)
        warm = asyncio.run(soak(base, 40, args.clients, args.hangup, args.max_tokens, args.max_seconds))
        rss_warm = tree_rss(server.pid)
        t0 = time.monotonic()
        tally = asyncio.run(soak(base, args.requests, args.clients, args.hangup, args.max_tokens, args.max_seconds))
        wall = time.monotonic() - t0
        time.sleep(2.0)  # cancelled generations are freed at the engine's next step
        rss_end = tree_rss(server.pid)
        busy = metric(base, "lcpp_zh_engine_slots_busy")
        queued = metric(base, "lcpp_zh_engine_queue_depth")
        restarts = metric(base, "lcpp_zh_runner_restarts_total")
        growth = (rss_end - rss_warm) / rss_warm * 100
        print(f"soak: {args.requests} streamed requests, {args.clients} clients, {args.hangup:.0%} hanging up; "
              f"{wall:.0f} s (warm-up {warm.done + warm.hung_up} requests)")
        print(f"  completed {tally.done}, hung up {tally.hung_up}, errors {tally.errors}, runner restarts "
              f"{restarts:.0f}")
        print(f"  memory (server + runner): {rss_warm / 2**20:.0f} MiB after warm-up, {rss_end / 2**20:.0f} MiB "
              f"at the end: {growth:+.1f} %")
        print(f"  slots busy after the load: {busy:.0f}, requests queued: {queued:.0f}")
        verdict = tally.errors == 0 and growth < 5 and busy == 0 and queued == 0
        print(f"  targets (errors 0, memory < 5 %, slots busy 0): {'met' if verdict else 'MISSED'}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        print(f"  server log: {log.name}")


if __name__ == "__main__":
    main()
