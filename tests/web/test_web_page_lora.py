"""The page's LoRA panel against a real server that has an adapter (a real PEFT adapter on the tiny Chinese
Llama, converted to GGUF): it lists the adapter with its scale, and Apply sets the scale through /v1/lora.
The panel of a model without adapters stays hidden (tests/web/test_web_page.py checks that side).
"""

from __future__ import annotations

import httpx
import pytest
from lora_adapters import make_adapter
from page_harness import launch_browser, open_page, open_settings
from playwright.sync_api import expect
from server_harness import start_server

from lcpp_zh.convert.lora_adapter import convert_lora

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_zh_hf, tiny_zh_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("web-lora")
    adapter = convert_lora(make_adapter(tiny_zh_hf, root / "peft", r=4, alpha=8, seed=41), tiny_zh_hf,
                           root / "zh-style.gguf")
    srv = start_server([f"atom={tiny_zh_gguf}", "--lora", str(adapter), "--lora-scale", "0.5",
                        "--parallel", "1", "--ctx", "512", "--threads", "2"], root)
    yield srv
    srv.stop()


def test_lora_scales_are_shown_and_applied(server):
    pw, browser = launch_browser()
    try:
        watch = open_page(browser, server.url)
        page = watch.page
        open_settings(page)
        row = page.locator("#lora-list .lora")
        row.wait_for()
        expect(row.locator("span")).to_have_text("zh-style")
        expect(row.locator("input[type=number]")).to_have_value("0.5")
        row.locator("input[type=number]").fill("0.25")
        expect(row.locator("input[type=range]")).to_have_value("0.25")
        page.click("#lora-apply")
        page.wait_for_selector("#toast:not([hidden])")
        assert [a["scale"] for a in httpx.get(f"{server.url}/v1/lora", timeout=30).json()] == [0.25]
        page.reload()
        page.wait_for_selector("#lora-list .lora")
        expect(page.locator("#lora-list input[type=number]")).to_have_value("0.25")
        page.context.close()
        watch.check()
    finally:
        browser.close()
        pw.stop()
