"""The registry's loading logic with a fake engine at the engine boundary (the load itself is a sleep): one load
for many waiters, --max-loaded never exceeded under a random mix, keep-alive 0, failed loads, bounded waiting,
names that look like paths. The real thing (runners, HTTP) is tests/server/test_models_on_demand.py.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.keep_alive import parse_keep_alive
from lcpp_zh.server.registry import ModelRegistry, ModelSource, ServedModel


class FakeEngine:
    live: set[str] = set()
    most_live = 0

    def __init__(self, alias: str) -> None:
        self.alias = alias
        FakeEngine.live.add(alias)
        FakeEngine.most_live = max(FakeEngine.most_live, len(FakeEngine.live))

    def close(self) -> None:
        FakeEngine.live.discard(self.alias)


@pytest.fixture(autouse=True)
def fresh_engines():
    FakeEngine.live, FakeEngine.most_live = set(), 0


def registry(names: str = "abc", *, broken: str = "", **kwargs) -> tuple[ModelRegistry, list[str]]:
    loads: list[str] = []

    def load(alias: str, name: str, named: bool) -> ServedModel:
        loads.append(alias)
        time.sleep(random.uniform(0.005, 0.03))
        if alias in broken:
            raise ValueError(f"{name}: not a GGUF file")
        return ServedModel(alias, FakeEngine(alias))

    source = ModelSource(load=load, named=tuple((n, f"{n}.gguf") for n in names))
    return ModelRegistry(source, scan_cache=False, **{"keep_alive_s": None, **kwargs}), loads


async def use(reg: ModelRegistry, name: str, hold_s: float = 0.01, **kwargs) -> str:
    lease = await reg.acquire(name, **kwargs)
    try:
        await asyncio.sleep(hold_s)
        return lease.model.alias
    finally:
        lease.release()


def test_many_waiters_share_one_load():
    async def main():
        reg, loads = registry()
        got = await asyncio.gather(*[use(reg, "a") for _ in range(10)])
        assert got == ["a"] * 10 and loads == ["a"]
        assert [(e.alias, e.status) for e in reg.entries()] == [("a", "loaded"), ("b", "available"),
                                                                ("c", "available")]
        reg.close()
    asyncio.run(main())


@pytest.mark.parametrize("max_loaded", [1, 2])
@pytest.mark.parametrize("keep_alive", [None, 0.0, 0.01])
def test_max_loaded_holds_under_a_random_mix(max_loaded, keep_alive):
    async def main():
        reg, _ = registry(max_loaded=max_loaded, keep_alive_s=keep_alive)
        rng = random.Random(7)
        for _ in range(15):
            names = [rng.choice("abc") for _ in range(8)]
            got = await asyncio.wait_for(asyncio.gather(*[use(reg, n, rng.uniform(0, 0.02)) for n in names]), 20)
            assert got == names
        assert FakeEngine.most_live <= max_loaded
        reg.close()
    asyncio.run(main())


def test_keep_alive_zero_unloads_after_the_request_and_a_busy_model_stays():
    async def main():
        reg, loads = registry()
        held = await reg.acquire("a")
        await use(reg, "a", keep_alive=0.0)  # released while another request still holds it: stays loaded
        await asyncio.sleep(0.05)
        assert "a" in FakeEngine.live
        held.release()
        await asyncio.sleep(0.05)
        assert "a" not in FakeEngine.live and loads == ["a"]
        assert await reg.unload("a") is False
        reg.close()
    asyncio.run(main())


def test_a_timed_keep_alive_expires():
    async def main():
        reg, _ = registry(keep_alive_s=0.1)
        await use(reg, "b")
        entry = next(e for e in reg.entries() if e.alias == "b")
        assert entry.status == "loaded" and 0 < entry.expires_at - time.time() <= 0.1
        await asyncio.sleep(0.3)
        assert FakeEngine.live == set()
        reg.close()
    asyncio.run(main())


def test_a_failed_load_fails_every_waiter_and_is_retried():
    async def main():
        reg, loads = registry(broken="b")
        results = await asyncio.gather(*[use(reg, "b") for _ in range(3)], return_exceptions=True)
        assert all(isinstance(r, ApiError) and r.status == 500 and "not a GGUF file" in r.message for r in results)
        assert loads == ["b"]
        with pytest.raises(ApiError, match="not a GGUF file"):
            await use(reg, "b")
        assert loads == ["b", "b"]
        assert await use(reg, "a") == "a"  # the others still load
        reg.close()
    asyncio.run(main())


def test_waiting_is_bounded():
    async def main():
        reg, _ = registry()
        reg.max_waiting = 2
        results = await asyncio.gather(*[use(reg, "a") for _ in range(5)], return_exceptions=True)
        refused = [r for r in results if isinstance(r, ApiError)]
        assert len(refused) == 3 and {r.status for r in refused} == {503}
        assert results.count("a") == 2
        reg.close()
    asyncio.run(main())


@pytest.mark.parametrize("name", ["../a", "/etc/passwd", "a/../b", "./a", "A"])
def test_names_are_looked_up_never_opened(name):
    async def main():
        reg, loads = registry()
        with pytest.raises(ApiError) as info:
            await reg.acquire(name)
        assert info.value.status == 404 and loads == []
        reg.close()
    asyncio.run(main())


def test_the_ollama_tag_and_the_file_name_find_the_alias():
    async def main():
        reg, _ = registry()
        assert await use(reg, "a:latest") == "a"
        assert await use(reg, "b.gguf") == "b"
        reg.close()
    asyncio.run(main())


@pytest.mark.parametrize(("value", "seconds"), [("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3), (300, 300.0),
                                                ("0", 0.0), (-1, None), ("-1m", None), ("1.5s", 1.5)])
def test_keep_alive_forms(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "m", True, None, [], "1e3", float("nan")])
def test_keep_alive_junk_is_a_400(value):
    with pytest.raises(ApiError) as info:
        parse_keep_alive(value)
    assert info.value.status == 400 and info.value.param == "keep_alive"
