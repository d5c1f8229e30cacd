"""Screenshot of the web page after a real write and ask, for the docs (headless Debian chromium).

python benchmarks/web_screenshot.py --checkpoint runs/demo/gradmem/best --out results/service/web_page.png
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import tempfile
import threading
import time

import uvicorn
from playwright.sync_api import expect, sync_playwright

from gradmem.run.checkpoint import load_checkpoint
from gradmem.serve.engine import Engine, EngineConfig
from gradmem.serve.service import create_app
from gradmem.serve.store import MemoryStore

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--context", default="!ab:cd!!ef:gh!!ij:kl!!mn:op!|")
    parser.add_argument("--questions", default="?!ab:\n?!ef:\n?!ij:\n?!mn:")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="results/service/web_page.png")
    args = parser.parse_args()
    model, task, _ = load_checkpoint(args.checkpoint)
    engine = Engine(
        model, task.tokenizer, MemoryStore(tempfile.mkdtemp(prefix="gradmem-shot-")), EngineConfig(stop="|")
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine, checkpoint=args.checkpoint), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#context", args.context)
        page.fill("#steps", str(args.steps))
        page.click("#write")
        # locator waits: wait_for_function evaluates a string, which the page's Content-Security-Policy forbids
        expect(page.locator("#memory-id")).to_have_text(re.compile(r"^[0-9a-f]{32}$"), timeout=60000)
        page.fill("#questions", args.questions)
        page.click("#ask")
        expect(page.locator("#answers li").first).to_be_visible(timeout=60000)
        page.screenshot(path=args.out, full_page=True)
        print("\n".join(page.locator("#answers li").all_inner_texts()))
        browser.close()
    server.should_exit = True
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
