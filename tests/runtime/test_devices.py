"""Device enumeration through ggml's backend registry (the CPU here, with its memory), the `devices` command,
and the choice of devices by --gpus."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime import ggml_api
from lcpp_zh.runtime.devices import list_devices, select_devices


def test_enumeration_lists_the_cpu_with_its_memory():
    devices = list_devices()
    cpu = [d for d in devices if d.type == "cpu"]
    assert len(cpu) == 1 and cpu[0].name == "CPU" and cpu[0].backend == "CPU" and cpu[0].handle
    # ggml reports the host's physical memory for the CPU device: compare with psutil's view.
    assert cpu[0].total == pytest.approx(psutil.virtual_memory().total, rel=0.02)
    assert 0 < cpu[0].free <= cpu[0].total
    assert [d.index for d in devices] == list(range(len(devices)))
    assert "CPU" in ggml_api.backend_names()


def test_devices_are_chosen_by_index_or_name():
    devices = list_devices()
    cpu = next(d for d in devices if d.type == "cpu")
    assert select_devices(devices, str(cpu.index)) == [cpu] == select_devices(devices, "cpu")
    assert select_devices(devices, None) == [d for d in devices if d.offloads]
    with pytest.raises(EngineError, match="no device 'Metal9'.*lcpp-zh devices"):
        select_devices(devices, "Metal9")


def test_devices_command_prints_a_table_and_json():
    run = [sys.executable, "-m", "lcpp_zh.cli"]
    table = subprocess.run([*run, "devices"], capture_output=True, text=True, check=True).stdout
    assert table.splitlines()[0].split()[:6] == ["INDEX", "NAME", "BACKEND", "TYPE", "FREE", "TOTAL"]
    assert any(line.split()[1:4] == ["CPU", "CPU", "cpu"] for line in table.splitlines()[1:])
    listed = json.loads(subprocess.run([*run, "devices", "--json"], capture_output=True, text=True,
                                       check=True).stdout)
    assert [d["name"] for d in listed] == [d.name for d in list_devices()]
    assert all(d["total"] > 0 for d in listed if d["type"] == "cpu")


def test_a_bad_rpc_endpoint_is_a_one_line_usage_error():
    out = subprocess.run([sys.executable, "-m", "lcpp_zh.cli", "devices", "--rpc", "no-port-here"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and "HOST:PORT" in out.stderr
