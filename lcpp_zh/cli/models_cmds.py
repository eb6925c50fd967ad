"""Model commands: `list` (the local cache, with sizes), `ps` (what a running server has loaded), `rm NAME`.

Thin: the cache is lcpp_zh.resolve's, a server is asked over HTTP (its /v1/models); `models` is the older
spelling of `list`, kept hidden.
"""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request
from typing import Any

import click

from lcpp_zh.cli.progress import human_size
from lcpp_zh.errors import LcppError
from lcpp_zh.server.settings import ServerSettings


def _modified(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s).strftime("%Y-%m-%d %H:%M")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def models_list(as_json: bool) -> None:
    """List the models in the cache (converted checkpoints), with quantization and size.

    The cache is LCPP_ZH_CACHE, default ~/.cache/lcpp-zh on Linux (honouring XDG_CACHE_HOME),
    ~/Library/Caches/lcpp-zh on macOS, %LOCALAPPDATA%\\lcpp-zh\\Cache on Windows. `lcpp-zh serve` serves
    each of them by its name without .gguf.

    \b
    Examples:
      lcpp-zh list
      lcpp-zh list --json
    """
    from lcpp_zh.resolve import list_models, models_dir

    entries = list_models()
    if as_json:
        click.echo(json.dumps([{"name": m.name, "path": str(m.path), "size": m.size, "quant": m.quant,
                                "modified": m.path.stat().st_mtime} for m in entries], ensure_ascii=False))
        return
    if not entries:
        click.echo(f"no models in {models_dir()}", err=True)
        return
    width = max(len("NAME"), *(len(m.name) for m in entries)) + 2
    click.echo(f"{'NAME':<{width}}{'QUANT':<9}{'SIZE':>11}  MODIFIED")
    for m in entries:
        click.echo(f"{m.name:<{width}}{m.quant or '?':<9}{human_size(m.size):>11}  {_modified(m.path.stat().st_mtime)}")
    click.echo(f"{len(entries)} model(s), {human_size(sum(m.size for m in entries))} in {models_dir()}", err=True)


def fetch_models(host: str, port: int, api_key: str | None, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """GET /v1/models of a running lcpp-zh server; a one-line LcppError when none answers."""
    url = f"http://{host}:{port}/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as answer:
            body = json.loads(answer.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise LcppError(f"{url}: the server wants an API key: --api-key KEY or LCPP_ZH_API_KEY") from None
        raise LcppError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LcppError(f"no lcpp-zh server at http://{host}:{port} ({reason}): start one with "
                        "`lcpp-zh serve`, or give --host/--port") from None
    except ValueError:
        raise LcppError(f"{url}: the answer is not JSON; is this an lcpp-zh server?") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise LcppError(f"{url}: no model list in the answer; is this an lcpp-zh server?")
    return [m for m in data if isinstance(m, dict)]


def _until(expires_at: Any, now: float) -> str:
    if expires_at is None:
        return "forever"
    left = float(expires_at) - now
    if left < 60:
        return f"{max(left, 0):.0f} s"
    return f"{left / 60:.0f} min" if left < 5400 else f"{left / 3600:.1f} h"


@click.command("ps")
@click.option("--host", default=ServerSettings.host, envvar="LCPP_ZH_HOST", help="The server's address.")
@click.option("--port", default=ServerSettings.port, type=click.IntRange(1, 65535), envvar="LCPP_ZH_PORT",
              help="The server's port.")
@click.option("--api-key", envvar="LCPP_ZH_API_KEY", default=None, show_default=False,
              help="The server's API key (env LCPP_ZH_API_KEY).")
@click.option("--all", "show_all", is_flag=True, help="Also list the models the server can load but has not.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON (the server's own entries).")
def models_ps(host: str, port: int, api_key: str | None, show_all: bool, as_json: bool) -> None:
    """List the models a running `lcpp-zh serve` has loaded, and until when they stay loaded.

    \b
    Examples:
      lcpp-zh ps
      lcpp-zh ps --port 8080 --all
    """
    models = fetch_models(host, port, api_key)
    shown = [m for m in models if show_all or m.get("status", "loaded") != "available"]
    if as_json:
        click.echo(json.dumps(shown, ensure_ascii=False))
        return
    if not shown:
        click.echo(f"no model loaded on http://{host}:{port} ({len(models)} can be; --all lists them)", err=True)
        return
    now = time.time()
    width = max(len("NAME"), *(len(str(m.get("id"))) for m in shown)) + 2
    click.echo(f"{'NAME':<{width}}{'STATUS':<11}{'SIZE':>11}  {'CONTEXT':>8}  UNTIL")
    for m in shown:
        size = human_size(m["size_bytes"]) if isinstance(m.get("size_bytes"), int) else "?"
        status = m.get("status", "loaded")
        until = _until(m.get("expires_at"), now) if status == "loaded" else ""
        context = str(m.get("n_ctx_slot", "")) if status == "loaded" else ""
        click.echo(f"{m.get('id')!s:<{width}}{status:<11}{size:>11}  {context:>8}  {until}")


@click.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Remove without asking.")
def models_rm(names: tuple[str, ...], yes: bool) -> None:
    """Remove models from the cache: a file name, a model's name (all its quantizations) or a repo id.

    Only files in the cache are ever removed; a path elsewhere is refused.

    \b
    Examples:
      lcpp-zh rm FlagAlpha/Atom-7B-Chat
      lcpp-zh rm FlagAlpha--Atom-7B-Chat.Q4_K_M.gguf --yes
    """
    from lcpp_zh.resolve import find_cached

    found = {m.path: m for name in names for m in find_cached(name)}  # every name checked before any removal
    for m in found.values():
        click.echo(f"{m.name}\t{human_size(m.size)}", err=True)
    total = human_size(sum(m.size for m in found.values()))
    if not yes:
        try:
            click.confirm(f"remove {len(found)} model(s), {total}?", abort=True, err=True)
        except click.Abort:
            raise LcppError("nothing removed: answer y, or pass --yes") from None
    for path in found:
        path.unlink(missing_ok=True)
        click.echo(f"removed {path.name}", err=True)


@click.group("models", invoke_without_command=True, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """The older spelling of `list` (and `models rm NAME`, which asks nothing)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(models_list, as_json=as_json)


models.add_command(models_list, "list")


@models.command("rm")
@click.argument("name")
def models_old_rm(name: str) -> None:
    """Remove a cached model without asking (as `models rm` always did)."""
    from lcpp_zh.resolve import remove_model

    for path in remove_model(name):
        click.echo(f"removed {path.name}", err=True)


COMMANDS: list[click.Command] = [models_list, models_ps, models_rm, models]
