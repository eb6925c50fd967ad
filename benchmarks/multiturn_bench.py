"""Multi-turn chat serving: `lcpp-zh serve` against llama.cpp's llama-server, the way chat apps use a server.

N users share one long system prompt and talk for several turns each; every turn resends the whole history
(system prompt, earlier questions and the answers the server gave) through the official openai client,
streaming. Both servers run in the same invocation on the same GGUF, threads and context (llama-server with
-np N, its unified KV and prompt cache defaults). Prints wall time, time to first token per turn (median) and
our ratios. A benchmark, not a test: it asserts nothing. llama-server comes from $LLAMA_CPP_TOOLS (`make
tools`) and is skipped when absent.

    python benchmarks/multiturn_bench.py [--users 8] [--turns 6] [--system-tokens 1500] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import DEFAULT_MODEL, TOPICS, Server, server_commands, token_counter  # noqa: E402

SYSTEM_SENTENCE = ("You are the help desk of a city library. Opening hours are nine to six on weekdays and ten to "
                   "four on Saturdays; members may borrow twelve books for three weeks and renew twice online. ")


@dataclass
class Result:
    name: str
    wall_s: float = 0.0
    ttft_by_turn: dict[int, list[float]] = field(default_factory=dict)
    tokens: int = 0
    errors: int = 0

    def ttft_p50(self, turns: range) -> float:
        values = [t for turn in turns for t in self.ttft_by_turn.get(turn, [])]
        return statistics.median(values) if values else float("nan")


async def user(client: openai.AsyncOpenAI, system: str, topic: str, turns: int, max_tokens: int,
               no_end: dict[str, float], result: Result) -> None:
    messages = [{"role": "system", "content": system}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn + 1} about {topic}: what should I know?"})
        t0, first, parts = time.perf_counter(), None, []
        try:
            stream = await client.chat.completions.create(
                model="bench", messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
                logit_bias=no_end)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    parts.append(chunk.choices[0].delta.content)
        except openai.OpenAIError as exc:
            print(f"{result.name}: {exc}", file=sys.stderr)
            result.errors += 1
            return
        result.ttft_by_turn.setdefault(turn, []).append((first or time.perf_counter()) - t0)
        messages.append({"role": "assistant", "content": "".join(parts)})


async def drive(name: str, base_url: str, args: argparse.Namespace, system: str, no_end: dict[str, float]) -> Result:
    result = Result(name)
    async with openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=900) as client:
        # One warm-up request outside the timing (first-call costs of both servers).
        await client.chat.completions.create(model="bench", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        t0 = time.perf_counter()
        await asyncio.gather(*(user(client, system, TOPICS[i % len(TOPICS)], args.turns, args.max_tokens, no_end,
                                    result) for i in range(args.users)))
        result.wall_s = time.perf_counter() - t0
    return result


def report(results: list[Result], turns: int) -> None:
    later = range(1, turns)
    print(f"\n{'server':14} {'wall s':>8} {'TTFT p50 turn 1':>16} {'TTFT p50 later':>15} {'errors':>6}")
    for r in results:
        print(f"{r.name:14} {r.wall_s:>8.2f} {r.ttft_p50(range(0, 1)):>16.3f} {r.ttft_p50(later):>15.3f} {r.errors:>6}")
    print("\nTTFT p50 per turn: " + "; ".join(
        f"{r.name} " + " ".join(f"{r.ttft_p50(range(t, t + 1)):.2f}" for t in range(turns)) for r in results))
    ours = next((r for r in results if r.name == "lcpp-zh"), None)
    ref = next((r for r in results if r.name == "llama-server"), None)
    if ours and ref and ours.wall_s:
        speed = ref.wall_s / ours.wall_s
        ttft_ok = ours.ttft_p50(later) <= ref.ttft_p50(later)
        print(f"lcpp-zh vs llama-server: wall time x{speed:.2f} faster; later turns' TTFT p50 "
              f"{ours.ttft_p50(later):.3f} s vs {ref.ttft_p50(later):.3f} s")
        print(f"   target (wall >= 1.2x, later-turn TTFT <= its): {'met' if speed >= 1.2 and ttft_ok else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF file served by both servers")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--users", type=int, default=8, help="concurrent conversations (and slots of each server)")
    parser.add_argument("--turns", type=int, default=6, help="turns per conversation, history resent each time")
    parser.add_argument("--system-tokens", type=int, default=1500, help="length of the shared system prompt")
    parser.add_argument("--max-tokens", type=int, default=48, help="answer length (end tokens banned)")
    parser.add_argument("--ctx", type=int, default=16384, help="context of each server, shared by its slots")
    parser.add_argument("--servers", default="lcpp-zh,llama-server")
    args = parser.parse_args()
    if not args.model.is_file():
        sys.exit(f"error: {args.model}: no such GGUF (run the server tests once, or pass --model)")
    tools = Path(os.environ["LLAMA_CPP_TOOLS"]) if os.environ.get("LLAMA_CPP_TOOLS") else None
    commands = server_commands(args.model, args.threads, args.users, args.ctx // args.users, tools)
    if "llama-server" in commands:
        commands["llama-server"] += ["--kv-unified"]  # as ours: any conversation may use the whole context
    wanted = [s for s in args.servers.split(",") if s]
    if "llama-server" in wanted and "llama-server" not in commands:
        print("llama-server skipped: set LLAMA_CPP_TOOLS to the folder holding it", file=sys.stderr)
    count, no_end = token_counter(args.model)
    per = count(SYSTEM_SENTENCE)
    system = SYSTEM_SENTENCE * max(1, args.system_tokens // per)
    print(f"model {args.model.name}, threads {args.threads}, {args.users} users x {args.turns} turns, system prompt "
          f"{count(system)} tokens, max_tokens {args.max_tokens}, ctx {args.ctx}")
    results = []
    with tempfile.TemporaryDirectory(prefix="multiturn-bench-") as tmp:
        for name in (n for n in wanted if n in commands):
            server = Server(name, commands[name], Path(tmp))
            try:
                server.wait_ready()
                results.append(asyncio.run(drive(name, server.base_url, args, system, no_end)))
                print(f"{name}: {results[-1].wall_s:.2f} s", file=sys.stderr)
            finally:
                server.stop()
    report(results, args.turns)


if __name__ == "__main__":
    main()
