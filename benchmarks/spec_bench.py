"""Speculative decoding: single-stream tokens/s of `lcpp-zh serve` with and without n-gram drafting, against
llama.cpp's llama-server without and with its own n-gram speculative decoding, on copy-heavy tasks (repeat a
~600-token text with small edits, refactor a code block) and on free chat.

Each server runs alone, on the same GGUF and threads, greedy (the output is the same with or without drafting);
prints tokens/s per task and server, lcpp-zh's acceptance rate, and the ratios (targets: drafting >= 1.3x
without it on the copy tasks, >= 1.0x on free chat). A benchmark, not a test: it asserts nothing.
llama-server comes from $LLAMA_CPP_TOOLS (built by `make tools`) and is skipped when absent.

    python benchmarks/spec_bench.py [--model M.gguf] [--threads 2] [--max-tokens 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import DEFAULT_MODEL, Server  # noqa: E402

TEXT = """The river that runs through the old town of Hallow Creek has shaped the lives of its people for three
hundred years. In spring, when the snow melts in the hills, the river rises and fills the low meadows with
water, and the farmers wait for it to fall before they plant their barley and oats. In summer the river is
slow and warm, and children swim in the deep pool below the mill while their parents sell bread, cheese and
honey at the market on the bridge. The mill itself was built in 1742 by a family of carpenters who came from
the coast. They chose the place because the river narrows there between two large rocks, and the water runs
fast enough to turn a wheel even in the driest months of the year. For more than a century the mill ground
flour for every village in the valley, and the miller was the richest man in the town. When the railway
arrived in 1868, cheap flour came from the cities and the mill slowly lost its trade. The last miller closed
its doors in 1921, and the building stood empty for almost fifty years. In 1970 a group of teachers bought
the mill for a small sum and turned it into a school for the children of the valley. They repaired the roof,
replaced the broken windows and built a library in the room where the grain was once stored. Today the
school has two hundred pupils, and every autumn they hold a festival on the bridge to thank the river for
the water, the fish and the stories it has given them. Visitors come from far away to see the old wheel,
which still turns, although it no longer grinds any flour. In the evening, when the light is low and the
water is quiet, the town gathers on the bank to listen to the old songs about the river, the mill and the
families who lived beside them. Some of the songs are sad, because the river has also taken lives in the
great floods of 1811, 1902 and 1954, but most of them are happy, and they end with the same line: the river
gives more than it takes."""

CODE = '''def load(path):
    f = open(path)
    d = f.read()
    f.close()
    r = []
    for l in d.split("\\n"):
        if l.strip() == "":
            continue
        p = l.split(",")
        r.append({"name": p[0], "age": int(p[1]), "city": p[2]})
    return r


def adults(r):
    o = []
    for x in r:
        if x["age"] >= 18:
            o.append(x)
    return o


def by_city(r):
    m = {}
    for x in r:
        if x["city"] not in m:
            m[x["city"]] = []
        m[x["city"]].append(x)
    return m


def report(path):
    r = load(path)
    a = adults(r)
    m = by_city(a)
    for c in sorted(m):
        print(c, len(m[c]))
'''

TASKS = {
    "copy-edit": "Repeat the following text exactly, changing only the year 1742 to 1744 and the word 'barley' "
                 "to 'wheat':\n\n" + TEXT,
    "refactor": "Refactor this Python code: rename the variable `r` to `rows` everywhere and keep everything "
                "else the same. Answer with the whole code.\n\n" + CODE,
    "free-chat": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
}
COPY_TASKS = ("copy-edit", "refactor")


def servers(model: Path, threads: int, ctx: int, tools: Path | None) -> dict[str, list[str]]:
    """name -> command ({port} to fill in). llama-server's ngram-simple mode is its prompt-lookup drafting."""
    lcpp = shutil.which("lcpp-zh", path=str(Path(sys.executable).parent)) or "lcpp-zh"
    ours = [lcpp, "serve", f"bench={model}", "--threads", str(threads), "--parallel", "1", "--ctx", str(ctx),
            "--no-embeddings", "--port", "{port}"]
    commands = {"lcpp-zh no-spec": [*ours, "--spec-ngram", "off"], "lcpp-zh ngram": ours}
    binary = tools / "llama-server" if tools else None
    if binary and binary.is_file():
        theirs = [str(binary), "-m", str(model), "-a", "bench", "-t", str(threads), "-np", "1", "-c", str(ctx),
                  "--port", "{port}"]
        commands["llama-server no-spec"] = theirs
        commands["llama-server ngram-simple"] = [*theirs, "--spec-type", "ngram-simple"]
    return commands


async def one_answer(base_url: str, prompt: str, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, decoding tokens/s): from the first streamed piece to the last, greedy."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", timeout=1200)
    first = last = None
    tokens = 0
    stream = await client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0,
        stream=True, stream_options={"include_usage": True}, extra_body={"repeat_penalty": 1.0})
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if any(choice.delta.content for choice in chunk.choices):
            last = time.perf_counter()
            first = first or last
    await client.close()
    return tokens, (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0


def draft_counts(base_url: str) -> tuple[float, float]:
    """lcpp-zh's /metrics draft counters (0, 0 for a server without them)."""
    try:
        text = urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    except OSError:
        return 0.0, 0.0

    def value(name: str) -> float:
        found = re.search(rf"^lcpp_zh_engine_{name}_total\{{[^}}]*\}} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("draft_tokens"), value("draft_accepted")


def measure(name: str, command: list[str], tasks: list[str], args: argparse.Namespace, log_dir: Path) -> dict:
    server = Server(name.replace(" ", "_"), command, log_dir)
    try:
        server.wait_ready()
        asyncio.run(one_answer(server.base_url, "Hello", 8))  # warm-up
        result = {}
        for task in tasks:
            drafted0, accepted0 = draft_counts(server.base_url)
            runs = [asyncio.run(one_answer(server.base_url, TASKS[task], args.max_tokens)) for _ in range(args.repeat)]
            drafted1, accepted1 = draft_counts(server.base_url)
            drafted = drafted1 - drafted0
            result[task] = {"tps": statistics.median(r[1] for r in runs), "n": runs[0][0],
                            "accept": (accepted1 - accepted0) / drafted if drafted else None}
            accept = f", {result[task]['accept']:.0%} of guesses accepted" if drafted else ""
            print(f"  {name:26} {task:10} {result[task]['tps']:7.1f} tokens/s ({runs[0][0]} tokens{accept})",
                  flush=True)
        return result
    finally:
        server.stop()


def report(results: dict[str, dict], tasks: list[str]) -> None:
    def ratio(a: str, b: str, task: str) -> str:
        if a not in results or b not in results or not results[b][task]["tps"]:
            return "   -  "
        return f"{results[a][task]['tps'] / results[b][task]['tps']:5.2f}x"

    print("\ntask        " + "".join(f"{name:>27}" for name in results))
    for task in tasks:
        print(f"{task:12}" + "".join(f"{results[name][task]['tps']:>20.1f} tok/s" for name in results))
    print("\nratios                      lcpp-zh ngram / no-spec   lcpp-zh ngram / llama-server ngram-simple   "
          "llama-server ngram-simple / no-spec")
    for task in tasks:
        target = "(target >= 1.3x)" if task in COPY_TASKS else "(target >= 1.0x)"
        print(f"{task:12} {ratio('lcpp-zh ngram', 'lcpp-zh no-spec', task):>28} {target}"
              f"{ratio('lcpp-zh ngram', 'llama-server ngram-simple', task):>22}"
              f"{ratio('llama-server ngram-simple', 'llama-server no-spec', task):>38}")
    if "llama-server no-spec" not in results:
        print("llama-server: skipped (set LLAMA_CPP_TOOLS to the folder built by `make tools`)")


def main() -> None:
    from lcpp_zh.common.system import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="answers per task and server (median)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"some of {','.join(TASKS)}")
    parser.add_argument("--servers", default=None, help="names to run (default: all available)")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task {unknown[0]!r}")
    tools = Path(os.environ["LLAMA_CPP_TOOLS"]) if os.environ.get("LLAMA_CPP_TOOLS") else None
    commands = servers(args.model, args.threads, args.ctx, tools)
    if args.servers:
        commands = {k: v for k, v in commands.items() if k in args.servers.split(",")}
    print(f"model {args.model.name}, {args.threads} threads, greedy, {args.max_tokens} new tokens at most, "
          f"median of {args.repeat}, one stream", flush=True)
    with tempfile.TemporaryDirectory(prefix="spec-bench-") as log_dir:
        results = {name: measure(name, command, tasks, args, Path(log_dir)) for name, command in commands.items()}
    report(results, tasks)


if __name__ == "__main__":
    main()
