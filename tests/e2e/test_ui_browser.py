"""The /ui/ chat page in a real browser: Debian's Chromium driven by Playwright, against the real stack.

Playwright's sync API (these tests are synchronous; pytest-asyncio's loop is not running in
them). Chromium is the system's (`executable_path`), never a browser download; every test
saves screenshots under its tmp_path. A route guard fails any request that leaves the
gateway, so the page is shown to work offline.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from corral.v1 import runner_pb2, runner_pb2_grpc
from tests.ggufs import write_tiny_gguf
from tests.registry.oci import OciRegistry, Proxy
from tests.stack import Stack, create_model, start_stack, stop_stack

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A greedy count never meets an end token, and its thinking/content split is predictable.
COUNT = "1, 2, 3, 4, 5, 6, 7,"
# A template whose thinking tags are "," and "9": the prompt ends inside the thinking block
# (it ends with ","), Gemma's " 8," is thinking and what follows " 9" is the answer.
COUNTER_TEMPLATE = "{{ range .Messages }}{{ if .Thinking }}, {{ .Thinking }} 9{{ end }}{{ .Content }}{{ end }}"

Page = Any  # playwright.sync_api.Page


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


class Tab:
    """One browser context on the page, recording requests that leave the gateway."""

    def __init__(self, browser: Any, base: str, shots: Path) -> None:
        self.base, self.shots = base, shots
        self.foreign: list[str] = []
        self.context = browser.new_context(viewport={"width": 1100, "height": 800})
        self.context.route("**/*", self._guard)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _guard(self, route: Any) -> None:
        if route.request.url.startswith(self.base + "/"):
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def open(self, hash_: str = "") -> Page:
        self.page.goto(f"{self.base}/ui/{hash_}")
        self.page.wait_for_load_state("networkidle")
        return self.page

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()
        assert self.foreign == [], f"the page reached outside the gateway: {self.foreign}"
        assert self.errors == [], self.errors


@pytest.fixture
def tab(browser: Any, stack: Stack, tmp_path: Path) -> Iterator[Tab]:
    t = Tab(browser, stack.url, tmp_path)
    yield t
    t.close()


def set_settings(page: Page, **values: str) -> None:
    page.click("nav a[href='#settings']")
    for key, value in values.items():
        page.fill(f"#set-{key}", value)
    page.click("nav a[href='#chat']")


def watch(page: Page, selector: str, attribute: str | None = None) -> None:
    """Record every change of `selector` (its text, or one attribute) in window.__seen."""
    page.evaluate(
        """([sel, attr]) => {
            window.__seen = [];
            const target = document.querySelector(sel);
            const read = () => attr ? target.getAttribute(attr) : target.textContent;
            new MutationObserver(() => window.__seen.push(read()))
                .observe(target, {subtree: true, childList: true, characterData: true, attributes: !!attr});
        }""",
        [selector, attribute],
    )


def until(page: Page, js: str, timeout: float = 60) -> None:
    """Poll a JS function until it returns true (wait_for_function evals, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(js):
        assert time.monotonic() < deadline, f"timed out waiting for {js}"
        time.sleep(0.05)


def runner_active(stack: Stack) -> int:
    with grpc.insecure_channel(stack.socket("runner-cpu")) as ch:
        status = runner_pb2_grpc.RunnerServiceStub(ch).GetStatus(runner_pb2.GetStatusRequest(), timeout=10)
    return sum(i.active_sequences for i in status.instances)


def test_page_is_served_and_the_root_still_answers(stack: Stack) -> None:
    assert httpx.get(stack.url + "/").text == "Ollama is running"
    r = httpx.get(stack.url + "/ui")
    assert r.status_code == 308 and r.headers["location"] == "/ui/"
    page = httpx.get(stack.url + "/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name, ctype in (("app.js", "javascript"), ("markdown.js", "javascript"), ("style.css", "text/css")):
        asset = httpx.get(f"{stack.url}/ui/{name}")
        assert asset.status_code == 200 and ctype in asset.headers["content-type"], name
    assert httpx.get(stack.url + "/ui/../pyproject.toml").status_code == 404
    assert httpx.get(stack.url + "/ui/missing.js").text == "404 page not found"


def test_markdown_renderer_escapes_before_it_formats(tab: Tab) -> None:
    page = tab.open()
    html = page.evaluate(
        """() => Markdown.render([
            '# Title', '', 'Some **bold**, *em* and `<b>code</b>` <img src=x onerror=alert(1)>', '',
            '- [ok](https://example.com/a_b) and [bad](javascript:alert(1))', '',
            '```python', 'print("<script>")', '```',
        ].join('\\n'))"""
    )
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html and "<em>em</em>" in html
    assert "<code>&lt;b&gt;code&lt;/b&gt;</code>" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert '<a href="https://example.com/a_b"' in html and "javascript:" not in html.split("[bad]")[0]
    assert 'href="javascript' not in html
    assert "<span>python</span>" in html and "print(&quot;&lt;script&gt;&quot;)" in html


def test_chat_streams_and_renders(tab: Tab, stack: Stack, gemma: str) -> None:
    page = tab.open()
    set_settings(page, temperature="0", num_predict="24", num_ctx="1024", system="You answer in Markdown.")
    page.select_option("#model", f"{gemma}:latest")
    page.fill("#prompt", "Write a Python function that adds two numbers.")
    watch(page, "#messages")
    with page.expect_response("**/api/chat") as chat:
        page.click("#send")
    page.wait_for_selector(".msg.assistant[data-state=done]", timeout=300_000)
    tab.shot("chat")

    sent = chat.value.request.post_data_json
    assert sent["model"] == f"{gemma}:latest" and sent["stream"] is True
    assert sent["options"] == {"temperature": 0, "num_predict": 24, "num_ctx": 1024}
    assert sent["messages"][0] == {"role": "system", "content": "You answer in Markdown."}
    events = [json.loads(line) for line in chat.value.text().splitlines() if line]
    answer = "".join(e["message"]["content"] for e in events)
    assert len(events) > 5 and events[-1]["done"] and answer
    # Tokens arrived one paint at a time: the text grew over several DOM updates before the end.
    seen = [s for s in page.evaluate("window.__seen") if s]
    assert len(set(seen)) > 3, seen
    # What is shown is exactly the streamed answer, through the Markdown renderer.
    shown = page.inner_html(".msg.assistant .content")
    assert shown == page.evaluate("(text) => Markdown.render(text)", answer)
    assert f"{events[-1]['eval_count']} tokens" in page.inner_text(".msg.assistant .stats")


def test_stop_cancels_the_generation_on_the_server(tab: Tab, stack: Stack, gemma: str) -> None:
    page = tab.open()
    set_settings(page, temperature="0", num_predict="900", num_ctx="1024")
    page.select_option("#model", f"{gemma}:latest")
    page.fill("#prompt", COUNT)
    page.click("#send")
    until(page, "() => document.querySelector('.msg.assistant .content').textContent.length > 12", 300)
    assert runner_active(stack) == 1
    assert page.is_visible("#stop") and not page.is_visible("#send")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-state=stopped]")
    tab.shot("stopped")
    deadline = time.monotonic() + 10
    while runner_active(stack) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runner_active(stack) == 0  # the aborted fetch closed the stream; the server cancelled
    text = page.inner_text(".msg.assistant .content")
    time.sleep(1)
    assert page.inner_text(".msg.assistant .content") == text
    assert page.inner_text(".msg.assistant .stats") == "stopped" and page.is_visible("#send")


def test_thinking_is_shown_apart_from_the_answer(tab: Tab, stack: Stack, gemma: str, tmp_path: Path) -> None:
    r = httpx.post(stack.url + "/api/create", json={"model": "counter", "from": gemma, "template": COUNTER_TEMPLATE})
    assert r.status_code == 200, r.text
    assert "thinking" in httpx.post(stack.url + "/api/show", json={"model": "counter"}).json()["capabilities"]
    page = tab.open()
    set_settings(page, temperature="0", num_predict="12", num_ctx="1024")
    page.select_option("#model", "counter:latest")
    page.fill("#prompt", COUNT)
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-state=done]", timeout=300_000)
    page.click(".msg.assistant .thinking summary")  # folded once the answer is complete
    tab.shot("thinking")
    assert page.inner_text(".msg.assistant .thought") == "8,"
    assert page.inner_text(".msg.assistant .content").startswith(", 10,")


def test_models_page_pulls_with_a_progress_bar_copies_and_deletes(
    tab: Tab, stack: Stack, oci: OciRegistry, tmp_path: Path
) -> None:
    # A 40 MB model published to the loopback registry, then forgotten here so the page pulls it.
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", n_embd=512, n_layer=4, n_head=8, n_head_kv=4, n_ff=1024)
    name = f"{oci.host}/library/tiny:v1"
    assert create_model(stack.url, name, tiny.path)[-1] == {"status": "success"}
    push = httpx.post(stack.url + "/api/push", json={"model": name, "insecure": True, "stream": False}, timeout=120)
    assert push.status_code == 200, push.text
    assert httpx.request("DELETE", stack.url + "/api/delete", json={"model": name}).status_code == 200
    assert httpx.head(f"{stack.url}/api/blobs/{tiny.digest}").status_code == 404

    proxy = Proxy(oci.host, rate=2 << 20)  # slow enough for the bar to be seen moving
    try:
        pulled = name.replace(oci.host, proxy.host)
        page = tab.open("#models")
        page.fill("#pull-name", pulled)
        page.check("#pull-insecure")
        watch(page, "#pull-progress", "value")
        page.click("#pull")
        until(page, "() => document.querySelector('#pull-progress').value > 0.2")
        tab.shot("pulling")
        page.wait_for_selector(f"#model-table tr[data-model='{pulled}']", timeout=300_000)
    finally:
        proxy.close()
    values = [float(v) for v in page.evaluate("window.__seen") if v is not None]
    between = sorted({v for v in values if 0 < v < 1})
    assert len(between) >= 3 and values == sorted(values) and values[-1] == 1, values
    assert page.inner_text("#pull-text") == "success"
    tab.shot("pulled")

    page.once("dialog", lambda d: d.accept("tiny-copy"))
    page.click(f"#model-table tr[data-model='{pulled}'] .copy-model")
    page.wait_for_selector("#model-table tr[data-model='tiny-copy:latest']")
    page.once("dialog", lambda d: d.accept())
    page.click(f"#model-table tr[data-model='{pulled}'] .delete-model")
    page.wait_for_selector(f"#model-table tr[data-model='{pulled}']", state="detached")
    tab.shot("copied-and-deleted")
    names = [m["name"] for m in httpx.get(stack.url + "/api/tags").json()["models"]]
    assert "tiny-copy:latest" in names and pulled not in names
    assert httpx.request("DELETE", stack.url + "/api/delete", json={"model": "tiny-copy"}).status_code == 200


def test_running_models_view_lists_and_unloads(tab: Tab, stack: Stack, gemma: str) -> None:
    # Longer than any context loaded before (a loaded longer one would serve a shorter request).
    body = {"model": gemma, "prompt": "", "options": {"num_ctx": 6144}, "stream": False}
    assert httpx.post(stack.url + "/api/generate", json=body, timeout=120).status_code == 200
    page = tab.open("#running")
    row = f"#ps-table tr[data-model='{gemma}:latest']"
    page.wait_for_selector(row)
    assert "6144" in page.inner_text(row)
    tab.shot("running")
    page.click(f"{row} button")
    page.click("#refresh-ps")
    page.wait_for_selector(row, state="detached", timeout=20_000)


def test_api_key_is_sent_from_the_settings(browser: Any, tmp_path: Path) -> None:
    guarded = start_stack(tmp_path / "stack", CORRAL_API_KEY="s3cret")
    t = Tab(browser, guarded.url, tmp_path)
    try:
        page = t.open("#models")  # the page itself needs no key
        page.wait_for_selector("#banner:not([hidden])")
        assert "API key" in page.inner_text("#banner")
        t.shot("unauthorized")
        page.click("nav a[href='#settings']")
        page.fill("#set-key", "s3cret")
        with page.expect_request("**/api/tags") as tags:
            page.click("nav a[href='#models']")
        assert tags.value.headers["authorization"] == "Bearer s3cret"
        page.reload()  # kept in this browser's storage
        assert page.input_value("#set-key") == "s3cret"
        with page.expect_response("**/api/ps") as ps:
            page.click("nav a[href='#running']")
        assert ps.value.status == 200
        t.shot("authorized")
    finally:
        t.errors.clear()  # the first 401 is logged by the browser, not a page error
        t.close()
        stop_stack(guarded)
