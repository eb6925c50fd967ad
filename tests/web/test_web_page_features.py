"""The web page's chat-page features in Chromium against a real server: the list of chats, characters,
sampling presets, the template picker, the UI language, the default and notebook modes, and Markdown that
must not become live HTML. Answers are kept short (and exact, through a grammar) so the tests stay quick.
Each page fails its test on an uncaught exception, a console error or a request that leaves the server.
"""

from __future__ import annotations

import json
import re

import pytest
from page_harness import (
    PHONE,
    close_drawers,
    literal_grammar,
    open_settings,
    send,
    set_field,
    wait_idle,
)
from playwright.sync_api import expect
from server_harness import start_server

pytestmark = pytest.mark.slow

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([f"smol={smollm2_gguf}", "--parallel", "2", "--ctx", "2048", "--threads", "2"],
                       tmp_path_factory.mktemp("serve-web-features"))
    yield srv
    srv.stop()






def answer_with(page, text: str) -> None:
    set_field(page, "#grammar", literal_grammar(text))


def ask_ok(page, value: str | None = None) -> None:
    """Answer the page's own question dialog (rename, confirm, preset name)."""
    page.wait_for_selector("#ask-dialog[open]")
    if value is not None:
        page.fill("#ask-input", value)
    page.click("#ask-ok")
    page.wait_for_selector("#ask-dialog", state="hidden")


def titles(page) -> list[str]:
    return page.locator("#chat-list .title").all_inner_texts()


def expect_titles(page, wanted: list[str]) -> None:
    """The chat list shows exactly these titles (Playwright retries until it does: the list redraws after
    the dialog's promise settles)."""
    expect(page.locator("#chat-list .title")).to_have_text(wanted)


def test_chats_new_switch_search_rename_delete(pages):
    page = pages().page
    answer_with(page, "第一个回答")
    send(page, "第一个问题")
    wait_idle(page)
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    answer_with(page, "第二个回答")
    send(page, "第二个问题")
    wait_idle(page)
    expect_titles(page, ["第二个问题", "第一个问题"])

    page.locator("#chat-list .chat-item", has_text="第一个问题").locator(".open").click()
    expect(page.locator(".msg.assistant .content")).to_have_text("第一个回答")
    page.fill("#chat-search", "第二个回")  # matches the answer text, not only titles
    expect_titles(page, ["第二个问题"])
    page.fill("#chat-search", "")

    page.locator("#chat-list .chat-item", has_text="第一个问题").locator(".act-rename").click()
    ask_ok(page, "北京之旅")
    expect(page.locator("#chat-list .title", has_text="北京之旅")).to_have_count(1)
    second = page.locator("#chat-list .chat-item", has_text="第二个问题")
    second.hover()  # its buttons show on hover (always on a touch screen)
    second.locator(".act-delete").click()
    ask_ok(page)
    expect_titles(page, ["北京之旅"])

    page.reload()
    page.wait_for_selector(".msg.assistant")
    expect_titles(page, ["北京之旅"])
    expect(page.locator(".msg.user .content")).to_have_text("第一个问题")


def test_characters_presets_template_and_language(pages):
    watch = pages(locale="en-US")
    page = watch.page
    assert page.evaluate("document.documentElement.lang") == "en"
    expect(page.locator("#send")).to_have_text("Send")
    labels = page.evaluate("""() => ['.modes', '#status', '#chats', '#settings', '#composer']
        .map((s) => document.querySelector(s).innerText).join(' ') + document.querySelector('#input').placeholder""")
    assert not CJK.search(labels), labels  # one language at a time (the 中 button aside)

    # A character: its greeting opens the chat, its persona is the system prompt.
    open_settings(page)
    page.click("#character-new")
    page.fill("#char-name", "李白")
    page.fill("#char-avatar", "诗")
    page.fill("#char-persona", "你是{{char}}，用古诗回答{{user}}。")
    page.fill("#char-greeting", "你好，我是{{char}}。")
    page.click("#character-form button[value=ok]")
    greeting = page.locator(".msg.assistant").first
    expect(greeting.locator(".content")).to_have_text("你好，我是李白。")
    expect(greeting.locator(".name").inner_text() == "李白" and greeting.locator(".avatar")).to_have_text("诗")

    # Presets: a built-in one fills the fields; an edited one is saved under the user's name.
    page.select_option("#preset", "precise")
    assert [page.locator(f"#{f}").input_value() for f in ("temperature", "top_p", "top_k", "repeat_penalty")] == \
        ["0.7", "0.1", "40", "1.18"]
    set_field(page, "#temperature", "0.5")
    expect(page.locator("#preset option:checked")).to_have_text("Precise *")  # changed since picked
    page.click("#preset-save")
    ask_ok(page, "Poet")
    expect(page.locator("#preset option:checked")).to_have_text("Poet")
    page.select_option("#template", "chatml")
    page.locator("#template").dispatch_event("change")

    answer_with(page, "床前明月光")
    send(page, "Hello")
    wait_idle(page)
    body = watch.bodies[-1]
    assert body["messages"] == [{"role": "system", "content": "你是李白，用古诗回答User。"},
                                {"role": "assistant", "content": "你好，我是李白。"},
                                {"role": "user", "content": "Hello"}]
    assert body["temperature"] == 0.5 and body["top_p"] == 0.1 and body["template"] == "chatml"
    expect(page.locator(".msg.assistant .content").last).to_have_text("床前明月光")

    # The language button switches every label, and the choice outlives a reload (the browser says English).
    page.click("#lang")
    expect(page.locator("#send")).to_have_text("发送")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    page.reload()
    page.wait_for_selector(".msg.assistant")
    expect(page.locator("#send")).to_have_text("发送")
    expect(page.locator("#character option:checked")).to_have_text("李白")
    expect(page.locator("#preset option:checked")).to_have_text("Poet")
    expect(page.locator("#temperature")).to_have_value("0.5")
    expect(page.locator("#template")).to_have_value("chatml")


def test_default_and_notebook_modes(pages):
    page = pages().page
    set_field(page, "#max_tokens", "6")
    set_field(page, "#grammar", "")
    page.click("#mode-default")
    source, output = page.locator("#default-input").bounding_box(), page.locator("#default-output").bounding_box()
    assert output["x"] > source["x"] + source["width"] - 1 and abs(output["y"] - source["y"]) < 5  # side by side
    page.fill("#default-input", "The capital of France is")
    page.click("#default-generate")
    page.wait_for_function("() => document.querySelector('#default-stats').innerText.includes('token')", timeout=120_000)
    first = page.locator("#default-output").inner_text()
    assert first and page.locator("#default-input").input_value() == "The capital of France is"
    page.click("#default-continue")
    page.wait_for_function(f"() => document.querySelector('#default-output').innerText.length > {len(first)}",
                           timeout=120_000)
    page.click("#default-md")
    assert page.locator("#default-output-md").is_visible() and page.locator("#default-output").is_hidden()

    page.click("#mode-notebook")
    page.fill("#notebook-text", "Once upon a time")
    page.click("#notebook-generate")
    page.wait_for_function("() => document.querySelector('#notebook-stats').innerText.includes('token')",
                           timeout=120_000)
    text = page.locator("#notebook-text").input_value()
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")
    page.reload()
    page.wait_for_selector("#view-notebook:not([hidden])")
    assert page.locator("#notebook-text").input_value() == text
    page.click("#mode-default")
    expect(page.locator("#default-input")).to_have_value("The capital of France is")

    phone = pages(viewport=PHONE).page
    phone.click("#mode-default")
    source, output = phone.locator("#default-input").bounding_box(), phone.locator("#default-output").bounding_box()
    assert output["y"] >= source["y"] + source["height"]  # stacked on a phone
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


HOSTILE = """# 标题
<img src=x onerror="window.__pwned = 1">
<script>window.__pwned = 2</script>
[点我](javascript:window.__pwned=3) 和 [正常链接](https://example.com)
$\\href{javascript:window.__pwned=4}{公式}$
<iframe src="/health"></iframe>"""


def test_imported_markdown_never_becomes_live_html(pages, tmp_path):
    page = pages().page
    chat = {"format": "lcpp-zh-chats", "version": 1, "chats": [{"id": "x", "messages": [
        {"role": "user", "content": "<b>不是粗体</b>"}, {"role": "assistant", "content": HOSTILE}]}]}
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(chat, ensure_ascii=False), encoding="utf-8")
    close_drawers(page)
    page.set_input_files("#import-file", str(path))
    answer = page.locator(".msg.assistant .content")
    answer.locator("h1").wait_for()
    assert answer.locator("img, script, iframe").count() == 0
    hrefs = answer.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert hrefs == ["https://example.com"]
    assert answer.locator("a").first.get_attribute("rel") == "noopener noreferrer"
    expect(page.locator(".msg.user .content")).to_have_text("<b>不是粗体</b>")
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None
