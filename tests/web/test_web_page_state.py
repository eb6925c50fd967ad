"""The page's shared state and its contract with the server, in Chromium against a real server: its
Content-Security-Policy, the header at phone widths, one generation at a time for all modes, the sampling
defaults and limits taken from GET /v1/defaults, the model picker's load states, the words of both languages.

Where the server cannot yet produce a state (a model not loaded; a 401 from /v1/lora alone) the test rewrites
that one response with Playwright's routing; every other request goes to the real server.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx
import pytest
from page_harness import (
    ENDLESS_CHINESE,
    PHONE,
    SMALL_PHONE,
    literal_grammar,
    open_settings,
    save_screenshot,
    send,
    set_field,
    wait_idle,
)
from playwright.sync_api import expect
from server_harness import start_server

from lcpp_zh.runtime.grammar import MAX_GRAMMAR_BYTES
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.server import schemas

pytestmark = pytest.mark.slow

JS = Path(__file__).parents[2] / "lcpp_zh" / "server" / "static" / "js"
# Records every text the status line shows, to see states that pass quickly ("loading model…").
WATCH_STATUS = """() => { window.__statuses = [];
  new MutationObserver(() => window.__statuses.push(document.querySelector('#status').textContent))
    .observe(document.querySelector('#status'), {childList: true, characterData: true, subtree: true}); }"""


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([f"smol={smollm2_gguf}", "--parallel", "1", "--ctx", "1024", "--threads", "2"],
                       tmp_path_factory.mktemp("serve-web-state"))
    yield srv
    srv.stop()


def test_csp_header_is_strict_and_enforced(server, pages):
    policy = httpx.get(server.url + "/").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'none'"
    assert "unsafe-eval" not in policy and directives["connect-src"] == "'self'"
    page = pages(allowed_console=("CSP violation: script-src", "inline script")).page
    # An inline script never runs, and its refusal is reported (the watch would fail the test on it).
    blocked = page.evaluate("""() => new Promise((resolve) => {
        document.addEventListener('securitypolicyviolation', (e) => resolve(e.violatedDirective), {once: true});
        const script = document.createElement('script');
        script.textContent = 'window.__inline = 1';
        document.body.appendChild(script); })""")
    assert blocked.startswith("script-src") and page.evaluate("window.__inline") is None
    page.context.close()


def test_defaults_come_from_the_server(server, pages):
    defaults = httpx.get(server.url + "/v1/defaults").json()
    expected = {f.name: getattr(SamplingParams(), f.name) for f in dataclasses.fields(SamplingParams)}
    assert defaults["sampling"] == expected
    assert defaults["limits"] == {"max_stop_strings": schemas.MAX_STOP_STRINGS,
                                  "max_stop_chars": schemas.MAX_STOP_CHARS, "max_grammar_bytes": MAX_GRAMMAR_BYTES}
    watch = pages()
    page = watch.page
    expect(page.locator("#temperature")).to_have_value(str(expected["temperature"]))  # a first visit
    for field in ("top_p", "top_k", "repeat_penalty", "max_tokens"):
        assert float(page.locator(f"#{field}").input_value()) == expected[field], field
    # Over the server's limits: the page says so and sends nothing.
    sent = len(watch.bodies)
    set_field(page, "#stop_strings", "\n".join(f"停{i}" for i in range(schemas.MAX_STOP_STRINGS + 1)))
    send(page, "你好")
    wait_idle(page)
    expect(page.locator(".msg.assistant .stats")).to_contain_text(str(schemas.MAX_STOP_STRINGS))
    assert len(watch.bodies) == sent
    set_field(page, "#stop_strings", "")
    set_field(page, "#grammar", f'root ::= "{"长" * (MAX_GRAMMAR_BYTES // 3)}"')
    page.click("#mode-notebook")
    page.fill("#notebook-text", "从前")
    page.click("#notebook-generate")
    expect(page.locator("#status")).to_contain_text(str(MAX_GRAMMAR_BYTES))
    assert len(watch.bodies) == sent


def test_one_generation_at_a_time_across_modes(pages):
    watch = pages()
    page = watch.page
    set_field(page, "#grammar", ENDLESS_CHINESE)
    set_field(page, "#max_tokens", "300")
    page.click("#mode-notebook")
    page.fill("#notebook-text", "从前有座山，")
    page.click("#notebook-generate")
    page.wait_for_function("() => document.querySelector('#notebook-text').value.length > 8", timeout=120_000)
    expect(page.locator("#notebook-stop")).to_be_enabled()
    for button in ("#notebook-generate", "#default-generate", "#default-continue", "#send"):
        expect(page.locator(button)).to_be_disabled()
    page.click("#mode-chat")
    sent = len(watch.bodies)
    page.fill("#input", "你好")
    page.press("#input", "Enter")  # requestSubmit() would pass the disabled button by: it must not start
    page.wait_for_timeout(300)
    assert len(watch.bodies) == sent and page.locator(".msg").count() == 0
    page.click("#mode-notebook")
    page.click("#notebook-stop")
    expect(page.locator("#notebook-generate")).to_be_enabled()
    expect(page.locator("#notebook-stop")).to_be_disabled()
    expect(page.locator("#send")).to_be_enabled()
    assert "已停止" in page.locator("#status").inner_text()


def _rewrite_models(page, change) -> None:
    """GET /v1/models from the real server, with `change(data)` applied to its list."""
    def handle(route):
        response = route.fetch()
        body = response.json()
        change(body["data"])
        route.fulfill(response=response, json=body)
    page.route("**/v1/models", handle)


def test_model_picker_shows_load_states_and_loads_on_first_request(pages):
    loaded = []

    def change(data):
        data[0]["status"] = "loaded" if loaded else "available"
        data.append({**data[0], "id": "big-13b", "status": "loading"})
        data.append({**data[0], "id": "no-status"})
        del data[-1]["status"]  # a server without load states: loaded

    watch = pages(before=lambda page: _rewrite_models(page, change))
    page = watch.page
    open_settings(page)
    expect(page.locator("#model-list .state")).to_have_text(["未加载", "加载中", "就绪"])
    assert page.locator("#model-list input").evaluate_all("els => els.map(e => e.value)") == \
        ["smol", "big-13b", "no-status"]
    assert page.locator("#lora-section").is_hidden()
    page.evaluate(WATCH_STATUS)
    set_field(page, "#grammar", literal_grammar("好的"))
    # Once the request is in, the server has the model loaded: the page asks again when the answer is done.
    page.route("**/v1/chat/completions", lambda route: (loaded.append(True), route.continue_()))
    send(page, "你好")
    wait_idle(page)
    statuses = page.evaluate("window.__statuses")
    assert statuses[0] == "正在加载模型 smol…" and statuses[-1] == "完成", statuses
    assert watch.bodies[-1]["model"] == "smol"
    expect(page.locator(".msg.assistant .content")).to_have_text("好的")
    expect(page.locator("#model-list .state").first).to_have_text("就绪")


def test_poll_timer_is_never_doubled(pages):
    requests = []

    def before(page):
        page.clock.install()
        _rewrite_models(page, lambda data: data[0].update(status="loading"))
        page.on("request", lambda r: requests.append(r.url) if r.url.endswith("/v1/models") else None)

    page = pages(before=before).page
    expect(page.locator("#model-list .state")).to_have_text(["加载中"])
    for _ in range(3):  # every API key change reloads the models
        set_field(page, "#api_key", "")
    expect(page.locator("#status")).to_have_text("就绪")
    before_poll = len(requests)
    page.clock.run_for(10_500)
    page.wait_for_timeout(500)
    assert len(requests) == before_poll + 1, requests


def test_deleting_a_preset_asks_first_and_lora_errors_show(pages):
    def before(page):
        page.route("**/v1/lora?*", lambda route: route.fulfill(
            status=401, json={"error": {"message": "missing or wrong API key", "type": "invalid_request_error"}}))

    page = pages(before=before, allowed_console=("status of 401",)).page
    expect(page.locator("#status")).to_contain_text("LoRA")
    expect(page.locator("#status")).to_contain_text("401")
    open_settings(page)
    page.click("#preset-save")
    page.fill("#ask-input", "我的")
    page.click("#ask-ok")
    expect(page.locator("#preset option:checked")).to_have_text("我的")
    page.click("#preset-delete")
    expect(page.locator("#ask-message")).to_have_text("删除预设“我的”？")
    page.click("#ask-dialog button[value=cancel]")
    expect(page.locator("#preset option:checked")).to_have_text("我的")
    page.click("#preset-delete")
    page.click("#ask-ok")
    expect(page.locator("#preset option:checked")).to_have_text("种子默认")
    assert page.locator("#preset option", has_text="我的").count() == 0


def _used_keys() -> set[str]:
    """Message keys the scripts name: t("key"), status keys, preset keys, icon titles."""
    keys = {"stateReady", "stateLoading", "stateRestarting", "stateFailed", "stateAvailable", "builtin", "mine"}
    for path in JS.glob("*.js"):
        text = path.read_text(encoding="utf-8")
        keys |= set(re.findall(r'\bt\("(\w+)"', text)) | set(re.findall(r'key: "(\w+)"', text))
        keys |= set(re.findall(r'iconButton\("\w+", "(\w+)"', text))
        for args in re.findall(r"setStatus\(([^,)]+)", text):
            keys |= set(re.findall(r'(?<!=== )"(\w+)"', args))  # not the values compared against
    return keys


def test_every_word_exists_in_both_languages(pages):
    page = pages().page
    strings = page.evaluate("""async () => { const m = await import('/static/js/i18n.js');
        return Object.fromEntries(Object.entries(m.STRINGS).map(([lang, s]) => [lang, Object.keys(s)])); }""")
    assert set(strings["zh"]) == set(strings["en"])
    in_html = page.evaluate("""() => [...document.querySelectorAll('*')].flatMap((el) => ['i18n', 'i18nPlaceholder',
        'i18nTitle', 'i18nAriaLabel'].map((k) => el.dataset[k]).filter(Boolean))""")
    missing = (set(in_html) | _used_keys()) - set(strings["zh"])
    assert not missing, missing
    assert "preset" in in_html  # the preset picker's label


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_header_fits_phones(pages, tmp_path, scheme):
    for viewport in (SMALL_PHONE, PHONE):
        for locale in ("zh-CN", "en-US"):
            page = pages(viewport=viewport, locale=locale, color_scheme=scheme).page
            expect(page.locator("#status")).not_to_be_empty()
            boxes = page.evaluate("""() => [...document.querySelectorAll('.topbar > *, .mode')]
                .filter((el) => el.offsetParent !== null)
                .map((el) => ({id: el.classList.contains('mode') ? `tab ${el.id}` : el.id || el.className,
                               ...el.getBoundingClientRect().toJSON()}))""")
            width = viewport["width"]
            assert all(b["left"] >= 0 and b["right"] <= width for b in boxes), boxes
            nav = next(b for b in boxes if b["id"] == "modes")
            tabs = [b for b in boxes if b["id"].startswith("tab ")]
            assert len(tabs) == 3 and all(nav["left"] <= t["left"] and t["right"] <= nav["right"] for t in tabs), tabs
            # Nothing shares a row with the tabs in the space between "Notebook" and the language button.
            lang = next(b for b in boxes if b["id"] == "lang")
            between = [b for b in boxes if b["left"] >= tabs[-1]["right"] - 1 and b["right"] <= lang["left"] + 1
                       and b["top"] < lang["bottom"] and b["bottom"] > lang["top"] and b["width"] > 0]
            assert not between, between
            status = page.locator("#status")
            assert status.evaluate("el => el.scrollWidth <= el.clientWidth"), "status cut short"
            save_screenshot(page, tmp_path, f"header-{viewport['width']}-{locale}-{scheme}.png")
            page.context.close()
