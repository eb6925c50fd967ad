"""RPC benchmark: prompt processing and generation tokens/s and load time of SmolLM2 (a) on the local CPU,
(b) split over two RPC workers on 127.0.0.1 (`lcpp-zh generate --rpc`), and (c) llama.cpp's llama-server --rpc
on the same workers, in one run; prints the figures, (b)/(a) and ours/llama-server (target >= 1.0x).

Loopback shows what the RPC protocol costs (serialising tensors, a round trip per graph), not what a network
costs: over Ethernet or Wi-Fi the split runs are slower still. The workers are `lcpp-zh worker` (or, with
--workers ggml-rpc-server or when that command is missing, llama.cpp's ggml-rpc-server from $LLAMA_CPP_TOOLS);
comparisons whose program is missing are skipped with the reason. A benchmark: it asserts nothing.
    python benchmarks/rpc_bench.py [--model M.gguf] [--tokens 128] [--repeat 3] [--workers lcpp-zh]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from generate_bench import default_model, lcpp_zh_generate  # noqa: E402

from fixtures.llama_tools import tools_dir  # noqa: E402
from lcpp_zh.common.net import free_port, wait_http_ready, wait_tcp_ready  # noqa: E402

LCPP_ZH = Path(sys.executable).parent / "lcpp-zh"
# About 230 tokens: enough prompt for a prompt-processing rate, the same text for every run.
PROMPT = ("The old lighthouse stood at the end of a long stone pier, where the river met the sea. For more than a "
          "hundred years its keepers had climbed the spiral stairs every evening to light the lamp, polish the "
          "great glass lens and write the weather into a leather-bound log. Ships coming home in the dark "
          "looked for its slow white flash before anything else, and fishermen's children learned to count "
          "the seconds between the beams before they learned to read. When the lamp was finally automated, the "
          "last keeper, a quiet woman named Ada, refused to leave. She moved her books, her kettle and her cat "
          "into the small room beneath the lantern and went on writing the weather every evening, although no "
          "one asked her to, because she said the sea deserved to have someone watching it. One winter night, "
          "during the worst storm the town had seen in fifty years, the power failed along the whole coast, and")


def help_text(*command: str) -> str:
    return subprocess.run([str(LCPP_ZH), *command, "--help"], capture_output=True, text=True).stdout


class Worker:
    """One RPC worker process on 127.0.0.1:port."""

    def __init__(self, kind: str, threads: int, log_dir: Path) -> None:
        self.port = free_port()
        self.log = open(log_dir / f"worker-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        if kind == "lcpp-zh":
            argv = [str(LCPP_ZH), "worker", "--port", str(self.port)]
            if "--threads" in help_text("worker"):
                argv += ["--threads", str(threads)]
        else:
            argv = [str(tools_dir() / "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(self.port), "-t", str(threads)]
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoint = f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        try:
            wait_tcp_ready("127.0.0.1", self.port, timeout, process=self.process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"worker on {self.endpoint}: {exc}; see {self.log.name}") from None
        time.sleep(0.2)  # let it take the next client after our bare probe

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def ours(model: Path, n: int, threads: int, rpc: list[str]) -> dict:
    """`lcpp-zh generate`: pp = prompt tokens / time to first token, tg = its tokens/s after the first token,
    load = the rest of the command's wall time (Python start-up, plan, model load)."""
    extra = ("--ctx", "2048", *(("--rpc", ",".join(rpc)) if rpc else ()))
    r = lcpp_zh_generate(model, n, threads, "all" if rpc else "0", extra, prompt=PROMPT)
    decode = (r["n"] - 1) / r["tps"] if r["n"] > 1 and r["tps"] else 0.0
    return {"pp": r["prompt_tokens"] / r["ttft"], "tg": r["tps"], "load": r["wall"] - r["ttft"] - decode,
            "n": r["n"]}


def llama_server(exe: Path, model: Path, n: int, threads: int, rpc: list[str], log_dir: Path) -> dict:
    """llama-server on the workers: load = start until /health answers; pp and tg from its own timings."""
    port = free_port()
    argv = [str(exe), "-m", str(model), "-t", str(threads), "-c", "2048", "--port", str(port), "-np", "1"]
    argv += ["--rpc", ",".join(rpc), "-ngl", "99"] if rpc else ["-ngl", "0"]
    with open(log_dir / "llama-server.log", "ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            try:
                wait_http_ready(f"{url}/health", 600, process=process, interval=0.05)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"llama-server: {exc}; see {log.name}") from None
            load = time.perf_counter() - started
            body = {"prompt": PROMPT, "n_predict": n, "temperature": 0, "repeat_penalty": 1.0, "cache_prompt": False}
            timings = httpx.post(f"{url}/completion", json=body, timeout=600).json()["timings"]
        finally:
            process.terminate()
            process.wait(timeout=30)
    return {"pp": timings["prompt_per_second"], "tg": timings["predicted_per_second"], "load": load,
            "n": timings["predicted_n"]}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def line(name: str, rows: list[dict]) -> str:
    return (f"{name:40} pp {median(rows, 'pp'):7.1f} tok/s   tg {median(rows, 'tg'):6.1f} tok/s   "
            f"load {median(rows, 'load'):5.2f} s   ({rows[0]['n']} tokens)")


def ratio(name: str, a: list[dict], b: list[dict], target: float | None = None) -> str:
    parts = [f"{key} x{median(a, key) / median(b, key):.2f}" for key in ("pp", "tg")]
    text = f"{name:40} {', '.join(parts)}, load x{median(a, 'load') / median(b, 'load'):.2f}"
    if target is not None:
        met = all(median(a, k) / median(b, k) >= target for k in ("pp", "tg"))
        text += f"   (target tokens/s >= {target}x: {'met' if met else 'MISSED'})"
    return text


def main() -> None:
    from lcpp_zh.common.system import physical_cores

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: the tests' SmolLM2)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=physical_cores(), help="local run, llama-server")
    # Both workers share this machine's cores: more threads than cores and ggml's spinning threads starve
    # each other (measured: 0.9 instead of 47 tokens/s with 2 threads per worker on 2 cores).
    parser.add_argument("--worker-threads", type=int, default=max(1, physical_cores() // 2))
    parser.add_argument("--workers", choices=["lcpp-zh", "ggml-rpc-server"], default="lcpp-zh")
    args = parser.parse_args()
    model = args.model or default_model()
    tools = tools_dir()
    server = tools / "llama-server" if tools and (tools / "llama-server").is_file() else None
    kind = args.workers
    if kind == "lcpp-zh" and "--port" not in help_text("worker"):
        print("lcpp-zh worker: not available in this build; using llama.cpp's ggml-rpc-server", file=sys.stderr)
        kind = "ggml-rpc-server"
    if kind == "ggml-rpc-server" and not (tools and (tools / "ggml-rpc-server").is_file()):
        sys.exit("no RPC worker: neither `lcpp-zh worker` nor ggml-rpc-server (run `make tools`)")
    our_rpc = "--rpc" in help_text("generate")
    print(f"model {model.name}, prompt of {len(PROMPT)} chars, {args.tokens} new tokens, {args.threads} threads, "
          f"workers: 2 x {kind} on 127.0.0.1 ({args.worker_threads} threads each), median of {args.repeat}")
    print("loopback: these figures show the RPC protocol's cost, not a network's", flush=True)
    runs: dict[str, list[dict]] = {"local": [], "split": [], "server-split": []}
    with tempfile.TemporaryDirectory(prefix="rpc-bench-") as logs:
        workers = [Worker(kind, args.worker_threads, Path(logs)) for _ in range(2)]
        try:
            for w in workers:
                w.wait_ready()
            rpc = [w.endpoint for w in workers]
            for i in range(args.repeat):  # interleaved, so a busy machine slows every variant alike
                runs["local"].append(ours(model, args.tokens, args.threads, []))
                if our_rpc:
                    runs["split"].append(ours(model, args.tokens, args.threads, rpc))
                if server:
                    runs["server-split"].append(llama_server(server, model, args.tokens, args.threads, rpc,
                                                             Path(logs)))
                print(f"  round {i + 1}/{args.repeat} done", file=sys.stderr)
        finally:
            for w in workers:
                w.stop()
    print(line("(a) lcpp-zh generate, local CPU", runs["local"]))
    if runs["split"]:
        print(line("(b) lcpp-zh generate --rpc (2 workers)", runs["split"]))
    else:
        print("(b) lcpp-zh generate --rpc: skipped (this lcpp-zh has no --rpc option)")
    if runs["server-split"]:
        print(line("(c) llama-server --rpc (same workers)", runs["server-split"]))
    else:
        print("(c) llama-server --rpc: skipped (set LLAMA_CPP_TOOLS or run `make tools`)")
    if runs["split"]:
        print(ratio("split / local (protocol cost)", runs["split"], runs["local"]))
    if runs["split"] and runs["server-split"]:
        print(ratio("ours / llama-server, both split", runs["split"], runs["server-split"], target=1.0))
    print("load: ours is the whole command less prompt and generation (Python start-up included); "
          "llama-server's is start until /health answers")
    if hasattr(os, "getloadavg"):
        print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f} (other work on the machine skews figures)")


if __name__ == "__main__":
    main()
