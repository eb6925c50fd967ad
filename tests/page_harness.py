"""Drive the web page in Debian's chromium through Playwright, for the tests/web/test_web_page*.py tests.

`PageWatch` opens a page at a given size and language and records what would make it broken for a user:
uncaught exceptions, console errors and any request that leaves the server (the page must fetch nothing from
anywhere else). Helpers below do what a user does: open the settings, set a field, send a message, wait.
The page's Content-Security-Policy forbids eval, and Playwright polls a bare-expression `wait_for_function`
with eval inside the page: waits here are written as functions ("() => ..."), which it runs without eval.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("LCPP_ZH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}
SMALL_PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}
# Long answers so that "stop" has something to stop; the grammar keeps the model from ending on its own.
ENDLESS_CHINESE = "root ::= [\u4e00-\u9fa5] root"
# Any Content-Security-Policy violation becomes a console error, so that `check()` fails on it (Chromium logs
# most of them itself; the event covers all). Init scripts are added by the browser, outside the page's CSP.
REPORT_CSP = """document.addEventListener('securitypolicyviolation',
  (e) => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));"""


def launch_browser():
    """(playwright, browser), or a skip when chromium or playwright is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pw = sync_api.sync_playwright().start()
    return pw, pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)


def has_cjk_font() -> bool:
    """Whether fontconfig knows a Chinese font (fonts-wqy-zenhei or fonts-noto-cjk): screenshots need one."""
    try:
        out = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(out.strip())


def literal_grammar(text: str) -> str:
    """A GBNF grammar that lets the model write exactly `text`."""
    body = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'root ::= "{body}"'


@dataclass
class PageWatch:
    """A page plus what went wrong on it; `check()` fails the test on any of it."""

    page: Any
    base_url: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    allowed_console: tuple[str, ...] = ()

    def on_console(self, message: Any) -> None:
        if message.type == "error" and not any(a in message.text for a in self.allowed_console):
            self.errors.append(f"console: {message.text}")

    def on_request(self, request: Any) -> None:
        url = request.url
        if not (url.startswith(self.base_url) or url.startswith(("data:", "blob:"))):
            self.foreign.append(url)
        if request.method == "POST" and "/v1/" in url and request.post_data:
            self.bodies.append({"url": url, **json.loads(request.post_data)})

    def check(self) -> None:
        assert not self.errors, self.errors
        assert not self.foreign, f"the page fetched from elsewhere: {self.foreign}"


def open_page(browser: Any, base_url: str, *, viewport: dict[str, int] = DESKTOP, locale: str = "zh-CN",
              allowed_console: tuple[str, ...] = (), wait_models: bool = True, color_scheme: str = "light",
              before: Callable[[Any], None] | None = None) -> PageWatch:
    """A watched page on the server; `before(page)` runs before it loads (routes, a fake clock)."""
    context = browser.new_context(viewport=viewport, locale=locale, accept_downloads=True, color_scheme=color_scheme,
                                  permissions=["clipboard-read", "clipboard-write"])
    context.add_init_script(REPORT_CSP)
    page = context.new_page()
    watch = PageWatch(page, base_url, allowed_console=allowed_console)
    page.on("pageerror", lambda exc: watch.errors.append(f"pageerror: {exc}"))
    page.on("console", watch.on_console)
    page.on("request", watch.on_request)
    if before is not None:
        before(page)
    page.goto(base_url + "/")
    if wait_models:
        page.wait_for_selector("#model-list input[type=radio]", state="attached", timeout=60_000)
    return watch


def is_narrow(page: Any) -> bool:
    return page.viewport_size["width"] < 1100


def open_settings(page: Any, section: str | None = None) -> None:
    if is_narrow(page) and not page.locator("#settings.open").count():
        page.click("#open-settings")
        # The drawer slides in (0.2 s): wait until it is all on screen.
        page.wait_for_function("() => document.querySelector('#settings').getBoundingClientRect().right <= innerWidth + 0.5")
    if section:
        page.locator(section).evaluate("el => { el.closest('details').open = true; }")


def close_drawers(page: Any) -> None:
    if page.locator("#backdrop").is_visible():
        page.keyboard.press("Escape")
        page.wait_for_selector("#backdrop", state="hidden")


def set_field(page: Any, selector: str, value: str) -> None:
    """Type into a settings field as a user would (the page saves on change)."""
    open_settings(page, selector)
    page.fill(selector, value)
    page.locator(selector).dispatch_event("change")


def send(page: Any, text: str) -> None:
    close_drawers(page)
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_idle(page: Any, timeout: float = 300_000) -> None:
    """Until no answer is streaming (the send button is back)."""
    page.wait_for_function("() => !document.querySelector('#send').hidden && !document.querySelector('.msg.streaming')",
                           timeout=timeout)


def save_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Screenshot into tmp_path, copied to $LCPP_ZH_SCREENSHOTS (e.g. docs/screenshots) when set."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    target = os.environ.get("LCPP_ZH_SCREENSHOTS")
    if target:
        if not has_cjk_font():
            pytest.fail("LCPP_ZH_SCREENSHOTS is set but no Chinese font is installed (apt-get install fonts-wqy-zenhei)")
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path

