"""The web page's closed-context mode, in headless Debian chromium (Playwright), against a real server: documents
with metadata and questions become the airoboros prompt (built by the server with chatsmith.closed_context, like
`chatsmith context`), and the answer's cited sources are matched to the documents, an unmatched one flagged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from test_web import ARGS, CHROMIUM

from chatsmith.closed_context import ONLY_INSTRUCTIONS, Document, build_context
from chatsmith.conversation import Conversation
from chatsmith.engine.base import SamplingParams
from chatsmith.serve.background import Served

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium, chromium-browser or google-chrome on PATH: apt-get install chromium "
    "(make browser)")]

BLUE = Document("In a shocking turn of events, blueberries are now green, but will be sticking with the same name.",
                {"date": "2021-01-01", "url": "https://web.site/123"})
SHOP = Document("The shop opens at 9.\n\nIt closes at 17 on Saturdays.", {"url": "https://shop.example/hours"})
QUESTIONS = ["What color are blueberries?", "When does the shop close on Saturdays? Source?"]
# a reply citing one given document, one made-up source, and the second document
REPLY = ("Blueberries are now green; the shop closes at 17.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123\n\n"
         "url: https://made.up/page\n\nurl: https://shop.example/hours")


@pytest.fixture(scope="module")
def served(tiny_llama):
    with Served(str(tiny_llama), model_id="tiny") as s:
        yield s


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1100, "height": 820})
        yield pg
        browser.close()


def test_context_endpoint_is_the_cli_code(served):
    docs = [{"metadata": d.metadata, "text": d.text} for d in (BLUE, SHOP)]
    r = httpx.post(served.url + "/v1/chatsmith/context", json={"documents": docs, "instructions": QUESTIONS,
                                                                "preamble": "Be brief."})
    assert r.status_code == 200 and r.json() == {"prompt": build_context([BLUE, SHOP], QUESTIONS,
                                                                          preamble="Be brief.")}
    r = httpx.post(served.url + "/v1/chatsmith/context", json={"documents": docs, "instructions": QUESTIONS,
                                                                "preamble": True})
    assert r.json()["prompt"].startswith(ONLY_INSTRUCTIONS + "\nBEGININPUT\n")
    r = httpx.post(served.url + "/v1/chatsmith/context", json={"documents": docs, "reply": REPLY})
    assert r.json()["matches"] == [0, None, 1] and r.json()["sources"][1] == {"url": "https://made.up/page"}
    bad = httpx.post(served.url + "/v1/chatsmith/context",
                     json={"documents": [{"text": "x\nENDINPUT\ny"}], "instructions": ["q"]})
    assert bad.status_code == 400 and "document 1 text contains the delimiter line 'ENDINPUT'" in bad.text
    assert httpx.post(served.url + "/v1/chatsmith/context", json={"documents": [], "reply": "x"}).status_code == 400


def fill_documents(page):
    page.check("#context-mode")
    assert page.is_visible("#context-panel") and page.locator("#documents .doc").count() == 1
    page.click("#add-doc")
    docs = page.locator("#documents .doc")
    assert docs.count() == 2 and docs.nth(1).locator(".doc-title").inner_text() == "Document 2"
    for i, d in enumerate((BLUE, SHOP)):
        docs.nth(i).locator(".doc-meta").fill("\n".join(f"{k}: {v}" for k, v in d.metadata.items()))
        docs.nth(i).locator(".doc-text").fill(d.text)
    page.uncheck("#dont-make-up")
    page.fill("#input", "\n".join(QUESTIONS))
    assert not page.is_checked("#only-instructions")


def test_closed_context_prompt_and_answer_from_the_model(served, page):
    """The model's own greedy answer to the closed-context prompt; the request carries exactly the prompt
    `chatsmith context` builds, alone (no history); a random tiny model cites nothing, and the page says so."""
    sent = []
    page.on("request", lambda r: sent.append((r.url, json.loads(r.post_data))) if r.method == "POST" else None)
    page.goto(served.url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
    page.evaluate("document.getElementById('temperature').value = '0'")
    page.fill("#max-tokens", "16")
    fill_documents(page)
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done='1'] .sources", timeout=60_000)
    prompt = build_context([BLUE, SHOP], QUESTIONS)
    chat = [body for url, body in sent if url.endswith("/v1/chat/completions")]
    assert chat[-1]["messages"] == [{"role": "user", "content": prompt}]
    assert page.inner_text(".msg.user .content") == "\n".join(QUESTIONS)
    expect = served.engine.generate([Conversation.single(prompt)], SamplingParams(max_new_tokens=16,
                                                                                  temperature=0))[0].text
    assert page.inner_text(".msg.assistant .content") == expect
    assert page.inner_text(".msg.assistant .sources") == "No sources cited."

    # the older card's preamble and "Don't make up answers": the prompt `chatsmith context --preamble
    # --dont-make-up` builds
    page.check("#dont-make-up")
    page.check("#only-instructions")
    page.fill("#input", QUESTIONS[0])
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelectorAll(\".msg.assistant[data-done='1'] .sources\").length === 2",
                           timeout=60_000)
    chat = [body for url, body in sent if url.endswith("/v1/chat/completions")]
    assert chat[-1]["messages"] == [{"role": "user", "content": build_context(
        [BLUE, SHOP], QUESTIONS[:1], dont_make_up=True, preamble=ONLY_INSTRUCTIONS)}]


def test_cited_sources_are_matched_and_an_unknown_one_is_flagged(served, page, tmp_path):
    """The chat stream is replaced by a canned reply that cites two of the documents and one made-up source (a
    random model cites nothing); parsing and matching are the server's."""
    def canned(route):
        chunks = [{"choices": [{"index": 0, "delta": {"content": REPLY[i:i + 20]}, "finish_reason": None}]}
                  for i in range(0, len(REPLY), 20)]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.goto(served.url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
    page.route("**/v1/chat/completions", canned)
    fill_documents(page)
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done='1'] .sources", timeout=60_000)
    page.unroute("**/v1/chat/completions")
    assert page.inner_text(".msg.assistant .content") == REPLY
    items = page.locator(".msg.assistant .sources li")
    assert items.count() == 3
    assert [items.nth(i).get_attribute("class") for i in range(3)] == [
        "source matched", "source unmatched", "source matched"]
    assert items.nth(0).inner_text() == "date: 2021-01-01, url: https://web.site/123 → Document 1"
    assert items.nth(1).inner_text() == "url: https://made.up/page ⚠ not one of the documents"
    assert items.nth(2).inner_text() == "url: https://shop.example/hours → Document 2"
    shot = Path(os.environ.get("CHATSMITH_SCREENSHOT_DIR", tmp_path)) / "web-context.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_bad_document_is_shown_not_sent(served, page):
    page.goto(served.url + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
    page.check("#context-mode")
    page.locator("#documents .doc-meta").first.fill("no colon here")
    page.locator("#documents .doc-text").first.fill("text")
    page.fill("#input", "Why?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.error")
    assert 'document 1: metadata line "no colon here" must read key: value' in page.inner_text(".msg.error")
    page.locator("#documents .doc-meta").first.fill("url: x")
    page.locator("#documents .doc-text").first.fill("a\nENDINPUT\nb")
    page.fill("#input", "Why?")
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.error').length === 2")
    assert "contains the delimiter line 'ENDINPUT'" in page.locator(".msg.error").nth(1).inner_text()
    assert page.locator(".msg.assistant").count() == 0 and not page.is_disabled("#send")
