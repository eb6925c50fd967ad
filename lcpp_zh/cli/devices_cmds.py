"""`lcpp-zh devices`: the devices llama.cpp can run on here (CPU, CUDA, Metal, Vulkan, ROCm, SYCL, ...) and on
the RPC workers given with --rpc, with free and total memory, as ggml's backend registry reports them.

Thin: enumeration is lcpp_zh.runtime.devices; the workers are probed before llama.cpp connects to them.
"""

from __future__ import annotations

import json

import click

from lcpp_zh.cli.progress import human_size


@click.command("devices")
@click.option("--rpc", default=None, envvar="LCPP_ZH_RPC", metavar="HOST:PORT[,HOST:PORT]",
              help="Also list the devices of these llama.cpp RPC workers.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def devices_list(rpc: str | None, as_json: bool) -> None:
    """List the devices layers can go to, with their free and total memory.

    The INDEX and NAME columns are what --gpus takes.

    \b
    Examples:
      lcpp-zh devices
      lcpp-zh devices --rpc 127.0.0.1:50052,192.168.1.20:50052 --json
    """
    from lcpp_zh.runtime.devices import add_rpc_servers, list_devices
    from lcpp_zh.runtime.rpc import parse_endpoints

    endpoints = parse_endpoints(rpc)
    if endpoints:
        add_rpc_servers(endpoints)
    found = list_devices()
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in found], ensure_ascii=False))
        return
    click.echo(f"{'INDEX':<6}{'NAME':<10}{'BACKEND':<9}{'TYPE':<7}{'FREE':>11}{'TOTAL':>11}  DESCRIPTION")
    for d in found:
        click.echo(f"{d.index:<6}{d.name:<10}{d.backend:<9}{d.type:<7}{human_size(d.free):>11}"
                   f"{human_size(d.total):>11}  {d.description}")


COMMANDS: list[click.Command] = [devices_list]
