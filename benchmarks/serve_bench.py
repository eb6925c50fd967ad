"""Serving throughput: `lcpp-zh serve` against llama-cpp-python's server and llama.cpp's llama-server.

Starts each server on the same GGUF with the same threads, drives it with 1 and with 8 concurrent streaming
clients through the openai package, and prints aggregate tokens/s, median and max time to first token,
errors, and our ratios to each reference measured in the same run. A benchmark, not a test: it asserts
nothing. llama-server is taken from $LLAMA_CPP_TOOLS (built by `make tools`) and
skipped when absent.

    python benchmarks/serve_bench.py [--model M.gguf] [--threads 2] [--max-tokens 128] [--clients 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fixtures import cache_root  # noqa: E402
from fixtures.smollm2 import GGUF_NAME  # noqa: E402
from lcpp_zh.common.net import free_port, wait_http_ready  # noqa: E402

# The SmolLM2 GGUF of the test fixtures (in the platform's user cache folder, or $LCPP_ZH_TEST_CACHE).
DEFAULT_MODEL = cache_root() / "smollm2" / GGUF_NAME
TOPICS = ["the history of tea", "how rivers form", "a trip to the mountains", "the life of bees",
          "building a wooden boat", "the night sky", "a busy market", "learning to cook rice",
          "the invention of paper", "a rainy afternoon", "trains across a continent", "a lighthouse keeper"]


@dataclass
class Run:
    name: str
    clients: int
    tokens: int = 0
    wall_s: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


def server_commands(model: Path, threads: int, parallel: int, ctx_per_slot: int, tools: Path | None) -> dict[str, list[str]]:
    """name -> command with {port} left to fill in."""
    lcpp = shutil.which("lcpp-zh", path=str(Path(sys.executable).parent)) or "lcpp-zh"
    commands = {
        "lcpp-zh": [lcpp, "serve", f"bench={model}", "--threads", str(threads), "--parallel", str(parallel),
                    "--ctx", str(ctx_per_slot * parallel), "--no-embeddings", "--port", "{port}"],
        # interrupt_requests off: otherwise every new request cuts the running stream short.
        "llama-cpp-python": [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "bench",
                             "--n_threads", str(threads), "--n_threads_batch", str(threads),
                             "--n_ctx", str(ctx_per_slot), "--interrupt_requests", "False", "--port", "{port}"],
    }
    binary = tools / "llama-server" if tools else None
    if binary and binary.is_file():
        commands["llama-server"] = [str(binary), "-m", str(model), "-a", "bench", "-t", str(threads), "-np",
                                    str(parallel), "-c", str(ctx_per_slot * parallel), "--port", "{port}"]
    return commands


class Server:
    def __init__(self, name: str, command: list[str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        argv = [part.replace("{port}", str(self.port)) for part in command]
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 300) -> None:
        try:
            wait_http_ready(f"{self.base_url}/models", timeout, process=self.process, interval=0.3)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{self.name}: {exc}; see {self.log.name}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


async def one_stream(client: openai.AsyncOpenAI, prompt: str, max_tokens: int, count, run: Run,
                     no_end: dict[str, float]) -> None:
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    try:
        stream = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=0.7, top_p=0.95, seed=1, stream=True, logit_bias=no_end,
            # The same sampling on every server: their defaults differ (lcpp-zh's are the seed's, with a
            # repetition penalty of 1.3; llama-server's top_k is 40 and its penalty off).
            extra_body={"top_k": 40, "repeat_penalty": 1.0})
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    first = first if first is not None else time.perf_counter() - start
                    parts.append(choice.delta.content)
    except openai.OpenAIError as exc:
        run.errors += 1
        print(f"  {run.name}: error {exc}", file=sys.stderr)
        return
    if first is not None:
        run.ttfts.append(first)
    # Counted with one tokenizer for every server, so chunking differences between servers do not matter.
    run.tokens += count("".join(parts))


async def drive(run: Run, base_url: str, round_no: int, max_tokens: int, count, no_end: dict[str, float]) -> None:
    """One batch of `run.clients` simultaneous streams; adds its tokens, wall time and TTFTs to `run`."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600) as client:
        start = time.perf_counter()
        prompts = [f"Write a long, detailed story about {TOPICS[(round_no * run.clients + i) % len(TOPICS)]}."
                   for i in range(run.clients)]
        await asyncio.gather(*(one_stream(client, p, max_tokens, count, run, no_end) for p in prompts))
        run.wall_s += time.perf_counter() - start


def token_counter(model: Path):
    """A token counter for texts, and a logit_bias that bans every end-of-generation token.

    With the ban each stream runs to max_tokens on every server: without it, the servers' slightly different
    numerics pick different words, some streams end early, and tokens/s compares different amounts of work.
    """
    import llama_cpp
    from llama_cpp import Llama

    vocab = Llama(str(model), vocab_only=True, verbose=False)
    handle = llama_cpp.llama_model_get_vocab(vocab.model)
    no_end = {str(t): -100.0 for t in range(vocab.n_vocab()) if llama_cpp.llama_vocab_is_eog(handle, t)}
    return (lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0), no_end


def report(runs: list[Run]) -> None:
    print(f"\n{'server':18} {'clients':>7} {'tokens':>7} {'wall s':>8} {'tok/s':>8} {'TTFT med':>9} {'TTFT max':>9} {'errors':>6}")
    for r in runs:
        med = statistics.median(r.ttfts) if r.ttfts else float("nan")
        top = max(r.ttfts) if r.ttfts else float("nan")
        print(f"{r.name:18} {r.clients:>7} {r.tokens:>7} {r.wall_s:>8.2f} {r.tps:>8.1f} {med:>9.3f} {top:>9.3f} {r.errors:>6}")
    ours = {r.clients: r for r in runs if r.name == "lcpp-zh"}
    print()
    for r in runs:
        if r.name == "lcpp-zh" or r.clients not in ours or not r.tps:
            continue
        mine = ours[r.clients]
        ours_ttft = statistics.median(mine.ttfts) if mine.ttfts else float("nan")
        theirs_ttft = statistics.median(r.ttfts) if r.ttfts else float("nan")
        print(f"{r.clients} client(s): lcpp-zh / {r.name}: tokens/s x{mine.tps / r.tps:.2f}; "
              f"median TTFT {ours_ttft:.3f} s vs {theirs_ttft:.3f} s")
        if r.name == "llama-server":
            # Targets: tokens/s >= 1.0x llama-server at every client count, and with several streams a
            # median time to first token no higher than its.
            met = mine.tps >= r.tps and (r.clients == 1 or ours_ttft <= theirs_ttft)
            print(f"   target vs llama-server (>= 1.0x{'' if r.clients == 1 else ', median TTFT <= its'}): "
                  f"{'met' if met else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF file served by every server")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--parallel", type=int, default=8, help="slots of lcpp-zh and llama-server")
    parser.add_argument("--ctx-per-slot", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,8", help="comma-separated concurrent client counts")
    parser.add_argument("--rounds", type=int, default=3, help="batches of requests per client count and server")
    parser.add_argument("--servers", default="lcpp-zh,llama-cpp-python,llama-server")
    args = parser.parse_args()
    if not args.model.is_file():
        sys.exit(f"error: {args.model}: no such GGUF (run the server tests once, or pass --model)")
    tools = Path(os.environ["LLAMA_CPP_TOOLS"]) if os.environ.get("LLAMA_CPP_TOOLS") else None
    commands = server_commands(args.model, args.threads, args.parallel, args.ctx_per_slot, tools)
    wanted = [s for s in args.servers.split(",") if s]
    if "llama-server" in wanted and "llama-server" not in commands:
        print("llama-server skipped: set LLAMA_CPP_TOOLS to the folder holding it", file=sys.stderr)
    clients = [int(c) for c in args.clients.split(",")]
    count, no_end = token_counter(args.model)
    print(f"model {args.model.name}, threads {args.threads}, max_tokens {args.max_tokens}, rounds {args.rounds}")
    names = [n for n in wanted if n in commands]
    runs = {(name, n): Run(name, n) for n in clients for name in names}
    loads = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as logs:
        # All servers run at once (idle ones use no CPU) and the rounds alternate between them, so a load
        # spike from elsewhere on the machine hits every server alike instead of one of them.
        servers = {name: Server(name, commands[name], Path(logs)) for name in names}
        try:
            for name, server in servers.items():
                server.wait_ready()
                asyncio.run(drive(Run(name, 1), server.base_url, 0, 16, count, no_end))  # warm-up
            for round_no in range(args.rounds):
                for n in clients:
                    for name, server in servers.items():
                        asyncio.run(drive(runs[(name, n)], server.base_url, round_no, args.max_tokens, count, no_end))
                        loads.append(os.getloadavg()[0])
                print(f"  round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for server in servers.values():
                server.stop()
    print(f"1-minute load average during the runs: {min(loads):.2f} to {max(loads):.2f} (other work skews figures)")
    report([runs[(name, n)] for name in names for n in clients])


if __name__ == "__main__":
    main()
