"""Open WebUI against Corral: install it, point it at a Corral stack, chat through its UI in Chromium.

Opt-in (it installs Open WebUI, about 2 GB with its CPU torch, into .cache/open-webui-venv):

    PYTHONPATH=$PWD .venv/bin/python bench/open_webui.py [--out DIR] [--prompt TEXT]

It starts a Corral stack with the test Gemma model, a logging reverse proxy in front of its
gateway, and `open-webui serve` offline (no auth, no OpenAI, no downloads) with
OLLAMA_BASE_URL pointing at the proxy; then Debian's chromium (Playwright) opens Open WebUI,
picks the model, sends a message and waits for the answer. Every call Open WebUI made to
Corral is written to DIR/calls.jsonl and summarised on stdout; screenshots land in DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import assets  # noqa: E402
from tests.stack import create_model, free_port, start_stack, stop_stack  # noqa: E402

VENV = ROOT / ".cache" / "open-webui-venv"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
MODEL = "gemma3"


def ensure_venv() -> Path:
    exe = VENV / "bin" / "open-webui"
    if exe.exists():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    # The CPU build of torch on this machine's disk first, so Open WebUI's torch range takes no CUDA build.
    subprocess.run([*pip, "torch==2.13.0"], check=False)
    subprocess.run([*pip, "open-webui"], check=True)
    return exe


class LoggingProxy:
    """A reverse proxy to Corral's gateway that records each call (streamed bodies pass through)."""

    def __init__(self, target: str, log: Path) -> None:
        self.target, self.log = target, log
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = uvicorn.Server(
            uvicorn.Config(self.app, port=self.port, log_level="warning", interface="asgi3", lifespan="off")
        )
        self.server = server
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        self.in_flight += 1
        body = await request.body()
        client = httpx.AsyncClient(base_url=self.target, timeout=None)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        started = time.monotonic()
        upstream = await client.send(
            client.build_request(
                request.method, request.url.path, params=request.url.query, headers=headers, content=body
            ),
            stream=True,
        )
        call: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            "request": body[:400].decode(errors="replace"),
            "status": upstream.status_code,
        }

        async def relay() -> Any:
            chunks, size, head = 0, 0, b""
            try:
                async for chunk in upstream.aiter_raw():
                    chunks, size = chunks + 1, size + len(chunk)
                    head = (head + chunk)[:400] if len(head) < 400 else head
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()
                call.update(chunks=chunks, bytes=size, seconds=round(time.monotonic() - started, 2),
                            response=head.decode(errors="replace"))  # fmt: skip
                self.calls.append(call)
                self.in_flight -= 1
                with self.log.open("a") as f:
                    f.write(json.dumps(call) + "\n")

        skip = ("content-length", "transfer-encoding", "connection", "content-encoding")
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in skip}
        response: Response = StreamingResponse(relay(), status_code=upstream.status_code, headers=out)
        await response(scope, receive, send)

    def stop(self) -> None:
        self.server.should_exit = True


def start_open_webui(exe: Path, ollama_url: str, data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    shutil.rmtree(data, ignore_errors=True)  # a fresh Open WebUI each run
    data.mkdir(parents=True)
    env = dict(
        os.environ,
        DATA_DIR=str(data),
        ENABLE_PERSISTENT_CONFIG="False",  # the environment wins over what an earlier run saved
        OLLAMA_BASE_URL=ollama_url,
        ENABLE_OLLAMA_API="True",
        ENABLE_OPENAI_API="False",
        WEBUI_AUTH="False",
        WEBUI_SECRET_KEY="corral-bench",
        OFFLINE_MODE="True",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        BYPASS_EMBEDDING_AND_RETRIEVAL="True",
        RAG_EMBEDDING_MODEL_AUTO_UPDATE="False",
        WHISPER_MODEL_AUTO_UPDATE="False",
        ENABLE_VERSION_UPDATE_CHECK="False",
        ENABLE_WEB_SEARCH="False",
        ANONYMIZED_TELEMETRY="False",
        SCARF_NO_ANALYTICS="true",
        DO_NOT_TRACK="true",
    )
    env.pop("PYTHONPATH", None)
    with log.open("wb") as f:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=f,
                                stderr=f, cwd=data)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"open-webui exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        time.sleep(1)
    proc.terminate()
    raise RuntimeError("open-webui did not start")


# Open WebUI 0.12 sends its builtin tools (time, files, ...) with every chat unless the model's
# "Function Calling" is "legacy"; Ollama, and so Corral, refuse tools for a model without the
# tools capability (400 "... does not support tools"), so Gemma needs the legacy mode.
LEGACY_TOOLS = """async () => {
    const auth = {Authorization: `Bearer ${localStorage.token}`, "Content-Type": "application/json"};
    const settings = await (await fetch("/api/v1/users/user/settings", {headers: auth})).json() || {};
    settings.ui = settings.ui || {};
    settings.ui.params = {...(settings.ui.params || {}), function_calling: "legacy"};
    const body = JSON.stringify(settings);
    const r = await fetch("/api/v1/users/user/settings/update", {method: "POST", headers: auth, body});
    return r.status;
}"""


def drive_chat(url: str, out: Path, prompt: str, native_tools: bool) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    result: dict[str, Any] = {"foreign_requests": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})

        def guard(route: Any) -> None:
            if route.request.url.startswith(url):
                route.continue_()
            else:  # offline: nothing leaves this machine
                result["foreign_requests"].append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        page = context.new_page()
        page.goto(url + "/", timeout=120_000)
        page.wait_for_selector("#chat-input", timeout=120_000)
        # A first visit opens the "what's new" dialog over the page.
        time.sleep(3)
        button = page.get_by_role("button", name="Okay, Let's Go!")
        if button.count() and button.first.is_visible():
            button.first.click()
        page.keyboard.press("Escape")
        page.screenshot(path=str(out / "owui-home.png"))
        if not native_tools:
            result["legacy_function_calling"] = page.evaluate(LEGACY_TOOLS)
            page.reload()
            page.wait_for_selector("#chat-input", timeout=120_000)
        # Pick the model in the selector at the top (its button shows "Select a model" until one is chosen).
        if not page.get_by_text(f"{MODEL}:latest").first.is_visible():
            page.get_by_role("button", name="Select a model").first.click()
            page.get_by_text(f"{MODEL}:latest").first.click()
        page.locator("#chat-input").click()
        page.keyboard.type(prompt)
        page.keyboard.press("Enter")
        # Open WebUI marks a finished answer with its action buttons (Copy, Regenerate...).
        page.wait_for_selector("button[aria-label='Copy']", timeout=600_000)
        time.sleep(2)
        page.screenshot(path=str(out / "owui-chat.png"), full_page=True)
        result["answer"] = page.locator("#response-content-container").last.inner_text()
        browser.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "open-webui-run")
    parser.add_argument("--prompt", default="Why is the sky blue? Answer in one sentence.")
    parser.add_argument("--native-tools", action="store_true", help="keep Open WebUI's native builtin tools")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    exe = ensure_venv()
    stack = start_stack(out / "stack", CORRAL_CONTEXT_LENGTH="2048")
    proxy = webui = None
    try:
        create_model(stack.url, MODEL, assets.gemma_path())
        (out / "calls.jsonl").unlink(missing_ok=True)
        proxy = LoggingProxy(stack.url, out / "calls.jsonl")
        webui, url = start_open_webui(exe, proxy.url, out / "data", out / "open-webui.log")
        result = drive_chat(url, out, args.prompt, args.native_tools)
        # Background tasks (title, tags, follow-ups) call the model after the answer: let them finish.
        deadline = time.monotonic() + 300
        time.sleep(5)
        while proxy.in_flight and time.monotonic() < deadline:
            time.sleep(1)
        print(json.dumps(result, indent=1))
    finally:
        if webui is not None:
            webui.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                webui.wait(20)
        if proxy is not None:
            print(f"{len(proxy.calls)} calls to Corral:")
            for c in proxy.calls:
                print(f"  {c['method']:6} {c['path']:28} {c['status']}  {c['chunks']:4} chunks  {c['seconds']}s")
            proxy.stop()
        stop_stack(stack)


if __name__ == "__main__":
    main()
