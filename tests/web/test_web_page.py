"""The web page in headless Chromium (Debian's chromium, driven by Playwright) against a real `lcpp-zh serve`.

A Chinese question is answered with a table, a quote, code and math: the tiny test model is held to that text
by a GBNF grammar typed into the page's own settings, so the real server streams it token by token and the
page renders it as it comes. The conversation survives a reload, is exported, and imported on a phone-sized
page, which must stay usable at 390 and 360 px. Stop, regenerate, edit and delete work on a streamed answer.
Every page here fails its test on an uncaught exception, a console error or a request that leaves the server.
Skipped when chromium or playwright is not installed (scripts/ensure-test-deps.sh installs chromium).
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from page_harness import (
    ENDLESS_CHINESE,
    PHONE,
    SMALL_PHONE,
    literal_grammar,
    open_page,
    open_settings,
    save_screenshot,
    send,
    set_field,
    wait_idle,
)
from playwright.sync_api import expect
from server_harness import start_server

pytestmark = pytest.mark.slow

QUESTION = "用表格比较 Atom-7B 和 Llama2-Chinese，再给一段 Python 代码和注意力公式。"
RICH_ANSWER = """两个模型的对比：

| 模型 | 词表 | 上下文 |
| --- | --- | --- |
| Atom-7B | 65000 | 4096 |
| Llama2-Chinese | 32000 | 4096 |

> Q4_K_M 约 4 GB，笔记本也能跑。

```python
def speed(n, s):
    return n / s  # 每秒 token 数
```

注意力公式，$d_k$ 是头的维度：

$$
\\mathrm{softmax}\\left(\\frac{QK^\\top}{\\sqrt{d_k}}\\right)V
$$

1. 量化模型
   - 推荐 **Q4_K_M**
2. 启动 `lcpp-zh serve`"""

# Records whether a block already rendered was ever replaced while the answer streamed (it must not be:
# only the block that is still growing is re-rendered).
WATCH_BLOCKS = """() => {
  window.__stable = null; window.__stableReplaced = false; window.__blocksSeen = 0;
  new MutationObserver((mutations) => {
    const content = document.querySelector('.msg.assistant.streaming .content');
    for (const m of mutations) for (const n of m.removedNodes) if (n === window.__stable) window.__stableReplaced = true;
    if (content) window.__blocksSeen = Math.max(window.__blocksSeen, content.children.length);
    if (content && !window.__stable && content.children.length >= 3) window.__stable = content.children[0];
  }).observe(document.getElementById('messages'), {childList: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([f"smol={smollm2_gguf}", "--parallel", "2", "--ctx", "4096", "--threads", "2"],
                       tmp_path_factory.mktemp("serve-web"))
    yield srv
    srv.stop()






def test_page_and_its_libraries_come_from_the_server(server):
    html = httpx.get(server.url + "/").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any("katex" in a for a in assets) and any("markdown-it" in a for a in assets)
    for asset in assets:
        assert asset.startswith("/static/"), asset  # no CDN
        response = httpx.get(server.url + asset)
        assert response.status_code == 200, asset
        etag = response.headers["etag"]
        assert httpx.get(server.url + asset, headers={"If-None-Match": etag}).status_code == 304
    assert httpx.get(server.url + "/static/js/main.js").headers["content-type"].startswith("text/javascript")
    font = httpx.get(server.url + "/static/vendor/katex/fonts/KaTeX_Main-Regular.woff2")
    assert font.status_code == 200 and font.headers["content-type"] == "font/woff2"
    assert httpx.get(server.url + "/static/../../etc/passwd").status_code == 404
    assert httpx.get(server.url + "/static/vendor/katex/LICENSE").status_code == 404  # only page files


def test_rich_answer_streams_renders_reloads_and_moves_to_a_phone(pages, tmp_path):
    desk = pages()
    page = desk.page
    expect(page.locator("#model-list .state").first).to_have_text("就绪")
    assert page.locator("#lora-section").is_hidden()  # this model has no LoRA adapters
    set_field(page, "#grammar", literal_grammar(RICH_ANSWER))
    set_field(page, "#max_tokens", "600")
    page.evaluate(WATCH_BLOCKS)
    send(page, QUESTION)
    wait_idle(page)

    answer = page.locator(".msg.assistant").last
    assert answer.locator("table tr").count() == 3
    expect(answer.locator("th").first).to_have_text("模型")
    assert "笔记本也能跑" in answer.locator("blockquote").inner_text()
    assert answer.locator(".katex").count() == 2 and answer.locator(".katex-display").count() == 1
    expect(answer.locator("ol > li").count() == 2 and answer.locator("ol ul > li")).to_have_text("推荐 Q4_K_M")
    code = answer.locator(".code-block code.language-python")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    assert "每秒 token 数" in code.locator(".hljs-comment").inner_text()
    # Only the growing block was re-rendered while streaming: the first one stayed the same element.
    assert page.evaluate("window.__blocksSeen") >= 3
    assert page.evaluate("window.__stable !== null && window.__stable.isConnected && !window.__stableReplaced")
    stats = answer.locator(".stats").inner_text()
    assert re.search(r"\d+ 个 token · [\d.]+ token/秒 · 提示 \d+", stats), stats
    request = desk.bodies[-1]
    assert request["stream"] and request["stream_options"] == {"include_usage": True}
    assert request["messages"] == [{"role": "user", "content": QUESTION}] and request["max_tokens"] == 600
    page.locator("#grammar").evaluate("el => { el.closest('details').open = false; }")
    page.evaluate("document.querySelector('#messages').scrollTop = 0")
    save_screenshot(page, tmp_path, "desktop.png")
    answer.locator(".copy-code").click()
    assert page.evaluate("navigator.clipboard.readText()") == RICH_ANSWER.split("```python\n")[1].split("```")[0]

    # A reload keeps the chat, its title and rendering, and the settings.
    page.reload()
    page.wait_for_selector(".msg.assistant .katex")
    assert page.locator(".msg.user .content").inner_text() == QUESTION
    assert page.locator("#chat-list .title").first.inner_text() == QUESTION[:40]
    expect(page.locator("#max_tokens")).to_have_value("600")
    assert page.locator("#grammar").input_value() == literal_grammar(RICH_ANSWER)
    with page.expect_download() as download:
        page.click("#export-chats")
    exported = tmp_path / "chats.json"
    download.value.save_as(exported)
    data = json.loads(exported.read_text(encoding="utf-8"))
    assert data["format"] == "lcpp-zh-chats" and data["chats"][0]["messages"][1]["content"] == RICH_ANSWER

    # The same chat imported on a phone: full-width conversation, settings in a drawer, input in reach.
    phone = pages(viewport=PHONE).page
    assert phone.locator("#settings").is_hidden() and phone.locator("#chats").is_hidden()
    phone.click("#open-chats")
    phone.set_input_files("#import-file", str(exported))
    phone.wait_for_selector(".msg.assistant .katex")
    phone.wait_for_selector("#chats", state="hidden")  # the drawer closed on import
    _assert_fits(phone)
    wrap = phone.locator(".msg.assistant .table-wrap")
    assert wrap.evaluate("el => el.getBoundingClientRect().right") <= PHONE["width"]
    phone.evaluate("document.querySelector('#messages').scrollTop = 0")
    phone.wait_for_selector("#toast", state="hidden")  # "imported 1 chat"
    save_screenshot(phone, tmp_path, "phone.png")
    open_settings(phone)
    assert phone.locator("#settings").is_visible()
    assert phone.locator("#settings").bounding_box()["width"] <= PHONE["width"]
    save_screenshot(phone, tmp_path, "phone-settings.png")
    phone.locator("#settings [data-close-drawer]").click()
    phone.wait_for_selector("#settings", state="hidden")


def _assert_fits(page) -> None:
    """No sideways scrolling; the message box is wide and inside the screen; the conversation is full width."""
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    box = page.locator("#input").bounding_box()
    assert box["width"] >= 0.6 * width and box["y"] + box["height"] <= height
    assert page.locator("#messages").bounding_box()["width"] >= width - 1


def test_phone_sends_streams_and_stops(pages):
    for viewport in (SMALL_PHONE, PHONE):
        page = pages(viewport=viewport).page
        _assert_fits(page)
        set_field(page, "#grammar", ENDLESS_CHINESE)
        set_field(page, "#max_tokens", "400")
        send(page, "你好，请介绍一下北京。")
        page.wait_for_function("() => (document.querySelector('.msg.assistant .content') || {}).innerText?.length >= 4",
                               timeout=120_000)
        _assert_fits(page)
        page.click("#stop")
        wait_idle(page)
        text = page.locator(".msg.assistant .content").inner_text()
        assert text and "\ufffd" not in text and all("\u4e00" <= ch <= "\u9fa5" for ch in text), text
        assert "已停止" in page.locator("#status").inner_text()
        assert "已停止" in page.locator(".msg.assistant .stats").inner_text()


def test_stop_regenerate_edit_and_delete(pages):
    page = pages().page
    set_field(page, "#grammar", ENDLESS_CHINESE)
    set_field(page, "#max_tokens", "400")
    send(page, "写一首关于长江的诗。")
    page.wait_for_function("() => document.querySelector('.msg.assistant .content').innerText.length >= 3",
                           timeout=120_000)
    page.click("#stop")
    wait_idle(page)
    stopped = page.locator(".msg.assistant .content").inner_text()
    assert stopped

    # Regenerate keeps the stopped answer as version 1 of 2.
    set_field(page, "#grammar", 'root ::= "长江东流" [一二三]')
    answer = page.locator(".msg.assistant").last
    answer.hover()
    answer.locator(".act-regenerate").click()
    wait_idle(page)
    assert re.fullmatch("长江东流[一二三]", answer.locator(".content").inner_text())
    expect(answer.locator(".versions")).to_have_text("2/2")
    answer.locator(".act-previous").click()
    assert page.locator(".msg.assistant .content").inner_text() == stopped
    expect(page.locator(".msg.assistant .versions")).to_have_text("1/2")

    # Editing the question resends it: the old answer goes, a new one comes.
    question = page.locator(".msg.user").first
    question.hover()
    question.locator(".act-edit").click()
    page.fill(".msg.user .edit-box", "写一首关于黄河的诗。")
    page.click(".msg.user button.primary")
    wait_idle(page)
    assert page.locator(".msg").count() == 2
    expect(page.locator(".msg.user .content")).to_have_text("写一首关于黄河的诗。")
    assert page.locator(".msg.assistant .versions").count() == 0
    expect(page.locator("#chat-list .title").first).to_have_text("写一首关于黄河的诗。")

    answer = page.locator(".msg.assistant").last
    answer.hover()
    answer.locator(".act-delete").click()
    assert page.locator(".msg").count() == 1
    page.reload()
    page.wait_for_selector(".msg.user")
    assert page.locator(".msg").count() == 1


def test_page_asks_for_the_api_key(browser, smollm2_gguf, tmp_path):
    srv = start_server([f"smol={smollm2_gguf}", "--parallel", "1", "--ctx", "1024", "--threads", "2"], tmp_path,
                       api_key="page-key")
    try:
        # The page and its libraries load without the key; the API (the page's defaults too) answers 401 until
        # it is given.
        assert httpx.get(srv.url + "/v1/defaults").status_code == 401
        assert httpx.get(srv.url + "/v1/defaults", headers=srv.headers()).status_code == 200
        watch = open_page(browser, srv.url, wait_models=False, allowed_console=("status of 401",))
        page = watch.page
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('401')")
        assert page.locator("#model-list input").count() == 0
        set_field(page, "#api_key", "page-key")
        page.wait_for_selector("#model-list input[type=radio]", state="attached")
        stored = page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
        assert "page-key" not in stored
        page.context.close()
        watch.check()
    finally:
        srv.stop()
