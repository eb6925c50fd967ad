"""The web chat page in headless Chromium (Debian's chromium, driven by Playwright) against a real server.

Load the page, send a Chinese message, watch the answer stream in, press stop; the notebook mode completes
raw text; the conversation survives a reload. Skipped when chromium or playwright is not installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from server_harness import start_server

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("LCPP_ZH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
# Long answers so that "stop" has something to stop; the grammar keeps the model from ending on its own.
ENDLESS_CHINESE = "root ::= [\u4e00-\u9fa5] root"


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([f"smol={smollm2_gguf}", "--parallel", "2", "--ctx", "4096", "--threads", "2"],
                       tmp_path_factory.mktemp("serve-web"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 800}, locale="zh-CN")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    yield page
    context.close()
    assert not errors, errors


def test_page_is_served_from_the_server_only(server):
    html = httpx.get(server.url + "/").text
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html
        assert httpx.get(server.url + asset).status_code == 200
    assert "http://" not in html and "https://" not in html  # no CDN
    assert httpx.get(server.url + "/static/../../etc/passwd").status_code == 404


def test_chinese_chat_streams_and_stops(page, server, tmp_path):
    assert page.locator("#model").input_value() == "smol"
    assert page.locator("#template option").count() > 2
    page.fill("#max_tokens", "400")
    page.fill("#input", "你好，请介绍一下北京。")
    # The grammar extension is not in the page's controls: add it to the request the page sends.
    page.route("**/v1/chat/completions", lambda route: route.continue_(
        post_data=route.request.post_data.replace('"stream":true', f'"stream":true,"grammar":"{ENDLESS_CHINESE}"')))
    page.click("#send")
    bubble = page.locator(".msg.assistant").last
    page.wait_for_function("document.querySelector('.msg.assistant:last-child').innerText.length >= 4",
                           timeout=120_000)
    assert page.locator("#stop").is_enabled()
    page.screenshot(path=str(tmp_path / "streaming.png"))
    page.click("#stop")
    page.wait_for_function("document.querySelector('#stop').disabled && !document.querySelector('#send').disabled")
    text = bubble.inner_text()
    assert "\ufffd" not in text
    assert all("\u4e00" <= ch <= "\u9fa5" for ch in text), text
    assert "已停止" in page.locator("#status").inner_text()
    page.screenshot(path=str(tmp_path / "stopped.png"))
    shots = os.environ.get("LCPP_ZH_SCREENSHOTS")
    if shots:
        shutil.copy(tmp_path / "streaming.png", Path(shots) / "web-streaming.png")
        shutil.copy(tmp_path / "stopped.png", Path(shots) / "web-stopped.png")
    # The conversation is kept in the browser: a reload shows it again.
    page.reload()
    page.wait_for_selector(".msg.user")
    assert page.locator(".msg.user").first.inner_text() == "你好，请介绍一下北京。"
    assert page.locator(".msg.assistant").first.inner_text() == text


def test_markdown_is_rendered_and_html_is_not_injected(page):
    page.evaluate("""() => {
        const div = document.createElement('div');
        div.id = 'probe';
        div.innerHTML = renderMarkdown('# 标题\\n**粗体** and `code`\\n- 一\\n- 二\\n<img src=x onerror=alert(1)>\\n```\\nx < y\\n```');
        document.body.appendChild(div);
    }""")
    probe = page.locator("#probe")
    assert probe.locator("strong").inner_text() == "粗体"
    assert probe.locator("code").first.inner_text() == "code"
    assert probe.locator("li").count() == 2
    assert probe.locator("img").count() == 0
    assert probe.locator("pre code").inner_text().strip() == "x < y"


def test_notebook_mode_completes_raw_text(page):
    page.click("#mode-notebook")
    assert page.locator("#notebook-view").is_visible()
    page.fill("#max_tokens", "8")
    page.fill("#notebook-text", "The capital of France is")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').innerText.includes('完成')", timeout=120_000)
    value = page.locator("#notebook-text").input_value()
    assert value.startswith("The capital of France is") and len(value) > len("The capital of France is")


def test_page_asks_for_the_api_key(browser, smollm2_gguf, tmp_path):
    srv = start_server([f"smol={smollm2_gguf}", "--parallel", "1", "--ctx", "1024", "--threads", "2"], tmp_path,
                       api_key="page-key")
    try:
        page = browser.new_page()
        page.goto(srv.url + "/")
        page.wait_for_function("document.querySelector('#status').innerText.includes('401')")
        assert page.locator("#model option").count() == 0
        page.fill("#api_key", "page-key")
        page.locator("#api_key").dispatch_event("change")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        assert page.evaluate("localStorage.getItem('lcpp-zh-chat')").find("page-key") == -1
        page.close()
    finally:
        srv.stop()
