"""The `lcpp-zh` command line: a click root group and the command groups it gathers.

Each command group lives in a module of its own (convert_cmds, chat_cmds, serve_cmds); this module
only wires them together and turns an `LcppError` into a one-line message with exit status 1.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from lcpp_zh import __version__
from lcpp_zh.common.console import STATUS, configure_console
from lcpp_zh.errors import LcppError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "LCPP_ZH", "show_default": True}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="lcpp-zh")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--debug", is_flag=True, envvar="LCPP_ZH_DEBUG", help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """Convert, chat with and serve Chinese Llama 2 models through llama.cpp.

    \b
    Examples:
      lcpp-zh convert ./Atom-7B-Chat -o atom.gguf --quant Q4_K_M
      lcpp-zh chat atom.Q4_K_M.gguf
      lcpp-zh serve atom.Q4_K_M.gguf --parallel 4
    """
    # Status lines (ready, the offload plan, a conversion starting) by default, without a prefix; -v adds INFO,
    # -vv DEBUG. Warnings and errors keep their level and logger.
    configure_console(max(STATUS - 10 * verbose, logging.DEBUG))
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register_commands() -> None:
    from lcpp_zh.cli import (
        chat_cmds,
        convert_cmds,
        devices_cmds,
        eval_cmds,
        imatrix_cmds,
        lora_cmds,
        models_cmds,
        quants_cmds,
        serve_cmds,
        worker_cmds,
    )

    for module in (convert_cmds, lora_cmds, chat_cmds, models_cmds, serve_cmds, eval_cmds, imatrix_cmds, quants_cmds,
                   devices_cmds, worker_cmds):
        for command in module.COMMANDS:
            cli.add_command(command)


_register_commands()


def main() -> None:
    """Entry point: run the CLI, printing library errors as one line instead of a traceback."""
    debug = os.environ.get("LCPP_ZH_DEBUG") == "1" or "--debug" in sys.argv
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except LcppError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
