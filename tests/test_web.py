"""The web chat page, end to end in headless Debian chromium driven by Playwright: type a message, watch the
answer stream in, change the system prompt, start a new conversation. A screenshot is kept for a human look."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import find_chromium

from chatsmith.conversation import Conversation
from chatsmith.engine.base import SamplingParams
from chatsmith.serve.background import Served

CHROMIUM = find_chromium()
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium, chromium-browser or google-chrome on PATH: apt-get install chromium "
    "(make browser)")]


@pytest.fixture(scope="module")
def served(tiny_llama):
    with Served(str(tiny_llama), model_id="tiny") as s:
        yield s


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1100, "height": 720})
        yield pg
        browser.close()


def test_chat_page_streams_answers(served, page, tmp_path):
    requests = []
    page.on("request", lambda r: requests.append(json.loads(r.post_data)) if r.method == "POST" else None)
    chunks = []
    page.on("response", lambda r: chunks.append(r.headers.get("content-type", "")) if r.request.method == "POST"
            else None)
    page.goto(served.url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
    assert page.title() == "chatsmith"

    # record every text the answer bubble shows while it streams
    page.evaluate("""() => { window.__partials = [];
        new MutationObserver(() => { const c = document.querySelector('.msg.assistant .content');
            if (c && c.textContent && window.__partials.at(-1) !== c.textContent)
                window.__partials.push(c.textContent); })
        .observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true}); }""")
    # settings travel with the request
    page.fill("#max-tokens", "24")
    # greedy: at the page's default 0.7 the random model's answer had a random length, and a full-suite run once
    # sampled an end after 2 pieces ("urate")
    page.fill("#temperature", "0")
    page.fill("#input", "What is the capital of France?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
    answer = page.inner_text(".msg.assistant .content")
    assert page.inner_text(".msg.user .content") == "What is the capital of France?"
    assert answer.strip(), "an answer appeared"
    assert requests[-1]["stream"] is True and requests[-1]["max_tokens"] == 24 and requests[-1]["temperature"] == 0
    assert requests[-1]["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert chunks[-1].startswith("text/event-stream")
    partials = page.evaluate("window.__partials")
    assert len(partials) >= 3 and partials[-1] == answer, partials   # it grew piece by piece, as streamed
    assert all(answer.startswith(p) for p in partials)

    # a second turn with a system prompt: history and system are sent
    page.fill("#system", "You are a pirate.")
    page.fill("#input", "And of Spain?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll(\".msg.assistant[data-done='1']\").length === 2",
                           timeout=60_000)
    sent = requests[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "You are a pirate."}
    assert sent[1:] == [{"role": "user", "content": "What is the capital of France?"},
                        {"role": "assistant", "content": answer},
                        {"role": "user", "content": "And of Spain?"}]
    shot = Path(os.environ.get("CHATSMITH_SCREENSHOT_DIR", tmp_path)) / "web-chat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # a greedy answer on the page is exactly the engine's answer
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    page.fill("#system", "")
    page.evaluate("document.getElementById('temperature').value = '0'")
    page.fill("#max-tokens", "16")
    page.fill("#input", "hello")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
    assert requests[-1]["messages"] == [{"role": "user", "content": "hello"}]   # history was cleared
    assert requests[-1]["temperature"] == 0
    expect = served.engine.generate([Conversation.single("hello")],
                                    SamplingParams(max_new_tokens=16, temperature=0))[0].text
    assert page.inner_text(".msg.assistant .content") == expect


def test_error_is_shown_not_swallowed(served, page):
    page.goto(served.url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
    page.fill("#max-tokens", "100000")        # past the context: the server says 400 naming max_tokens
    page.fill("#input", "hi")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.error", timeout=30_000)
    assert "max_tokens" in page.inner_text(".msg.error")
    assert not page.is_disabled("#send")
