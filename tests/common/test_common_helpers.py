"""lcpp_zh.common: core count and memory against the kernel's own figures, atomic writes, the loopback waits,
the one sampling table and the console's status lines."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest

from lcpp_zh.common.atomic import atomic_path, write_atomic
from lcpp_zh.common.net import free_port, wait_for, wait_http_ready
from lcpp_zh.common.sampling_defaults import SEED_SAMPLING
from lcpp_zh.common.system import available_memory, physical_cores
from lcpp_zh.errors import ConversionError, LcppError

linux_only = pytest.mark.skipif(not Path("/sys/devices/system/cpu").is_dir(), reason="reads Linux's sysfs")


def _sysfs_cores(cpus: set[int]) -> int:
    topology = "/sys/devices/system/cpu/cpu{}/topology/{}"
    return len({(Path(topology.format(c, "physical_package_id")).read_text(),
                 Path(topology.format(c, "core_id")).read_text()) for c in cpus})


@linux_only
def test_physical_cores_match_sysfs():
    cpus = os.sched_getaffinity(0)
    if len(cpus) != os.cpu_count():
        pytest.skip("this process is already limited to some CPUs")
    assert physical_cores() == _sysfs_cores(cpus) >= 1


@linux_only
def test_physical_cores_follow_the_cpu_affinity():
    code = ("import os; os.sched_setaffinity(0, {0}); "
            "from lcpp_zh.common.system import physical_cores; print(physical_cores())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == 1


@linux_only
def test_available_memory_matches_meminfo():
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    expected = int(meminfo["MemAvailable"].split()[0]) * 1024
    assert available_memory() == pytest.approx(expected, rel=0.1)


def test_write_atomic_replaces_whole_and_keeps_permissions(tmp_path):
    target = tmp_path / "conv.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.json"]


def test_failed_writes_leave_nothing_behind(tmp_path):
    target = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConversionError, match=r"the folder .*missing does not exist"):
        write_atomic(tmp_path / "missing" / "out.gguf", b"x")
    with pytest.raises(ConversionError, match="is a folder"):
        write_atomic(tmp_path, b"x")

    def fail(path: Path, why: str) -> LcppError:
        return LcppError(f"{path}: cannot save ({why})")

    with pytest.raises(LcppError, match=r"out.gguf: cannot save \(the folder"):
        write_atomic(tmp_path / "nowhere" / "out.gguf", b"x", fail)


class _Health(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []

    def do_GET(self) -> None:
        self.send_response(self.answers.pop(0) if self.answers else 200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_wait_http_ready_waits_through_503_and_refusals():
    port = free_port()
    with pytest.raises(TimeoutError, match="not ready after 0.5 s"):
        wait_http_ready(f"http://127.0.0.1:{port}/health", 0.5, interval=0.05)  # nothing listens yet
    _Health.answers = [503, 503]
    server = http.server.HTTPServer(("127.0.0.1", port), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wait_http_ready(f"http://127.0.0.1:{port}/health", 10, interval=0.05)
        assert _Health.answers == []  # both 503s were seen before the 200
    finally:
        server.shutdown()
        server.server_close()


def test_wait_for_stops_when_the_process_exits():
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_for(lambda: False, timeout=30, process=process, what="server")
    assert wait_for(lambda: "yes", timeout=1) == "yes"


def test_one_sampling_table_for_runtime_cli_and_converter():
    from lcpp_zh.cli.chat_cmds import sampling_options
    from lcpp_zh.convert.sampling import FLAGALPHA_SAMPLING
    from lcpp_zh.runtime.sampling import SamplingParams

    # The seed's values, as FlagAlpha's Llama-Chinese README gives them.
    assert (SEED_SAMPLING.top_k, SEED_SAMPLING.top_p, SEED_SAMPLING.temperature, SEED_SAMPLING.repeat_penalty,
            SEED_SAMPLING.max_tokens) == (50, 0.95, 0.3, 1.3, 512)
    params = SamplingParams()
    assert {k: getattr(params, k) for k in SEED_SAMPLING.as_dict()} == SEED_SAMPLING.as_dict()
    command = sampling_options(click.command()(lambda **_: None))
    defaults = {p.name: p.default for p in command.params}
    assert {k: defaults[k] for k in SEED_SAMPLING.as_dict()} == SEED_SAMPLING.as_dict()
    assert FLAGALPHA_SAMPLING == {"sampling_top_k": 50, "sampling_top_p": 0.95, "sampling_temp": 0.3,
                                  "sampling_penalty_repeat": 1.3}


def test_status_lines_are_plain_and_warnings_keep_their_prefix():
    code = ("import logging; from lcpp_zh.common.console import configure_console, status; configure_console(); "
            "log = logging.getLogger('lcpp_zh.x'); status(log, 'ready: %s', 'atom'); log.warning('careful'); "
            "log.info('hidden at the default level')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr == "ready: atom\nWARNING lcpp_zh.x: careful\n" and proc.stdout == ""
