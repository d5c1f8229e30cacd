"""The web page end to end in a real headless browser (Debian chromium driven by Playwright),
against a real uvicorn server on loopback: write a context with a live loss chart, see its
reconstruction from memory, ask questions."""

from __future__ import annotations

import re
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
pytest.importorskip("playwright.sync_api", reason="the browser test needs the playwright pip package (dev extra)")
uvicorn = pytest.importorskip("uvicorn", reason="the service needs the 'serve' extra")

from conftest import TINY, benchmarks_on_path, live_server, tiny_model  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from gradmem.serve.engine import Engine, EngineConfig, TaskText  # noqa: E402
from gradmem.serve.store import MemoryStore  # noqa: E402
from gradmem.tasks.babi import BabiTask  # noqa: E402
from gradmem.tasks.tokenizers import CharTokenizer  # noqa: E402

with benchmarks_on_path():
    from web_screenshot import FLAGS  # the chromium flags of the page screenshot, shared  # noqa: E402


@pytest.fixture
def server(tmp_path):
    engine = Engine(tiny_model(), CharTokenizer.for_kv(62), MemoryStore(tmp_path / "store"), EngineConfig(stop="|"))
    url, stop = live_server(engine)
    yield url, engine
    stop()


@pytest.fixture
def babi_server(tmp_path):
    task = BabiTask(tokenizer={"type": "word", "vocab": "babi"})
    assert task.tokenizer.vocab_size <= TINY["vocab_size"]  # the tiny decoder's embedding covers the words
    engine = Engine(tiny_model(), task.tokenizer, MemoryStore(tmp_path / "store"), text=TaskText.of(task))
    url, stop = live_server(engine)
    yield url, engine, task
    stop()


def test_write_and_ask_in_a_browser(server):
    url, engine = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            console: list[str] = []  # a script or request the page's Content-Security-Policy blocks shows here
            page.on("console", lambda message: console.append(message.text))
            page.goto(url + "/")
            page.fill("#context", "!ab:cd!!ef:gh!|")
            page.fill("#steps", "3")
            page.click("#write")
            # locator waits, not wait_for_function: that evaluates a string, which the page's CSP forbids
            expect(page.locator("#memory-id")).to_have_text(re.compile(r"^[0-9a-f]{32}$"), timeout=30000)
            memory_id = page.inner_text("#memory-id")
            assert page.evaluate("losses.length") == 4  # one point per write step, plus the final loss
            assert "KiB" in page.inner_text("#kv-size") or "B" in page.inner_text("#kv-size")
            assert "smaller" in page.inner_text("#ratio")
            expect(page.locator("#recon-score")).to_contain_text("%", timeout=30000)
            report = engine.reconstruct(memory_id)
            assert page.text_content("#recon-text") == report["reconstruction"]
            assert page.text_content("#recon-context") == "!ab:cd!!ef:gh!|"
            assert f"{100 * report['token_accuracy']:.1f} %" in page.inner_text("#recon-score")
            assert report["reconstruction_note"] in page.inner_text("#recon-note")
            page.fill("#questions", "?!ab:\n?!ef:")
            page.click("#ask")
            expect(page.locator("#answers li")).to_have_count(2, timeout=30000)
            shown = page.locator("#answers li").all_inner_texts()
            expected = engine.ask([(memory_id, "?!ab:"), (memory_id, "?!ef:")])
            assert shown == [f"?!ab: → {expected[0]}", f"?!ef: → {expected[1]}"]
            page.fill("#context", "")  # an error is shown, not thrown
            page.click("#write")
            assert "paste a context" in page.inner_text("#status")
            assert not [text for text in console if "Content Security Policy" in text], console
        finally:
            browser.close()
    meta = engine.store.show(memory_id)
    assert meta["write"]["steps"] == 3 and meta["context_tokens"] == 15


def test_a_story_typed_in_is_answered_from_memory(babi_server):
    url, engine, task = babi_server
    story, questions = task.example()
    typed = "Mary moved to the bathroom. John went to the hallway. Mary travelled to the office."
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(url + "/")
            page.wait_for_selector("#example:not([hidden])", timeout=30000)  # the served task's example
            assert page.get_attribute("#context", "placeholder") == "e.g. " + story
            page.click("#example")
            assert page.input_value("#context") == story and page.input_value("#questions") == "\n".join(questions)
            page.fill("#context", typed)
            page.click("#write")
            expect(page.locator("#memory-id")).to_have_text(re.compile(r"^[0-9a-f]{32}$"), timeout=30000)
            memory_id = page.inner_text("#memory-id")
            page.fill("#questions", "Where is Mary?\nWhere is John?")
            page.click("#ask")
            expect(page.locator("#answers li")).to_have_count(2, timeout=30000)
            expected = engine.ask([(memory_id, "Where is Mary?"), (memory_id, "Where is John?")])
            shown = page.locator("#answers li").all_inner_texts()
            assert shown == [f"Where is Mary? → {expected[0]}", f"Where is John? → {expected[1]}"]
            page.fill("#questions", "Where is Zorro?")  # an unknown word: the server's message, shown
            page.click("#ask")
            expect(page.locator("#status")).to_contain_text("Zorro", timeout=30000)
            assert not [text for text in console if "Content Security Policy" in text], console
        finally:
            browser.close()
    assert engine.store.context(memory_id) == typed
