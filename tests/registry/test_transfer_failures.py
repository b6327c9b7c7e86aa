"""Pull failures against a real registry: answers that end a pull at once, answers worth
asking again, and the core closed while blobs are downloading.

The registry is Debian's docker-registry on loopback, behind a real HTTP front (`Front`)
that answers chosen blob GETs itself, or behind a throttling TCP proxy (`Proxy`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from corral.errors import CorralError
from services.registry.core import Registry
from services.registry.create import CreateRequest
from services.registry.download import TransferSettings
from services.registry.remote import retry_after
from tests.ggufs import TinyGGUF, file_digest, write_tiny_gguf
from tests.registry.helpers import create, events, upload
from tests.registry.oci import Front, OciRegistry, Proxy, Reply, start_oci_registry

# Default retries and backoff (6 tries, 0.5 s doubled): a permanent answer must not go through them.
DEFAULTS = TransferSettings(min_part=1 << 20)
FAST = TransferSettings(parallel=2, min_part=1 << 20, save_seconds=0.05, backoff_seconds=0.05)
# No periodic saves: what a fresh core resumes from is the final save of a cancelled download.
FINAL_SAVE_ONLY = replace(FAST, save_seconds=3600)
TINY = "test/failures:v1"
BIG = "test/failures-big:v1"
REGISTRY_BODY = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}'


@pytest.fixture(scope="module")
def oci(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    reg = start_oci_registry(tmp_path_factory.mktemp("oci-failures"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    """A ~12 MB GGUF: big enough to close the core mid-blob behind a throttled proxy."""
    return write_tiny_gguf(tmp_path_factory.mktemp("big") / "big.gguf", n_embd=256, n_ff=2048, n_layer=2)


@pytest.fixture(scope="module")
async def published(oci: OciRegistry, tiny: TinyGGUF, big: TinyGGUF, tmp_path_factory: pytest.TempPathFactory) -> None:
    reg = await Registry.open(tmp_path_factory.mktemp("publisher"))
    try:
        for gguf, name in ((tiny, TINY), (big, BIG)):
            await upload(reg, gguf)
            await create(reg, CreateRequest(name=f"{oci.host}/{name}", files={"m.gguf": gguf.digest}))
            assert [e async for e in reg.push(f"{oci.host}/{name}", insecure=True)][-1].status == "success"
    finally:
        await reg.close()


@pytest.fixture
def front(oci: OciRegistry, published: None) -> Iterator[Front]:
    f = Front(oci.host)
    yield f
    f.close()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler ("Task exception was never retrieved", ...)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield seen
    finally:
        loop.set_exception_handler(previous)


def gets_of(front: Front, digest: str) -> list[int]:
    """Statuses of the GETs of one blob, in order."""
    return [status for method, path, status in front.requests if method == "GET" and path.endswith(f"/{digest}")]


async def assert_nothing_stored(reg: Registry, digest: str) -> None:
    assert await reg.list_models() == []
    assert not list(reg.store.manifests_dir.rglob("*"))
    assert not reg.store.blob_path(digest).exists()


# ---- answers that end a pull at once ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, grpc.StatusCode.NOT_FOUND), (403, grpc.StatusCode.PERMISSION_DENIED), (400, grpc.StatusCode.INTERNAL)],
)
async def test_a_permanent_answer_fails_the_pull_at_once(
    front: Front, tiny: TinyGGUF, tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int, code: grpc.StatusCode
) -> None:
    reply = (status, {"Content-Type": "application/json"}, REGISTRY_BODY)
    front.answer = lambda path: reply if tiny.digest in path else None
    reg = await Registry.open(tmp_path / "models", DEFAULTS)
    try:
        with caplog.at_level(logging.WARNING, "services.registry.download"), pytest.raises(CorralError) as err:
            await events(reg.pull(f"{front.host}/{TINY}", insecure=True))
        assert gets_of(front, tiny.digest) == [status]  # asked once: no retries
        assert not [r for r in caplog.records if "retry" in r.getMessage()]
        assert err.value.code == code  # the gateway's HTTP status: 404, 403, 500
        if status == 404:
            assert err.value.message == f"pull model blob {tiny.digest}: file does not exist"
        else:
            assert err.value.message == f"{status}: {REGISTRY_BODY.decode()}"  # Ollama's "<status>: <body>"
        await assert_nothing_stored(reg, tiny.digest)
    finally:
        await reg.close()


# ---- answers worth asking again -------------------------------------------------------------


def first_answered(digest: str, reply: Reply, times: list[float]) -> Callable[[str], Reply | None]:
    """An `answer` hook: `reply` to the first GET of `digest`, forward the rest; records when each came."""

    def answer(path: str) -> Reply | None:
        if digest not in path:
            return None
        times.append(time.monotonic())
        return reply if len(times) == 1 else None

    return answer


@pytest.mark.parametrize(
    ("status", "headers"),
    [(429, {"Retry-After": "0"}), (429, {}), (503, {}), (408, {})],
)
async def test_a_transient_answer_is_retried(
    front: Front, tiny: TinyGGUF, tmp_path: Path, status: int, headers: dict[str, str]
) -> None:
    times: list[float] = []
    front.answer = first_answered(tiny.digest, (status, headers, b"slow down"), times)
    reg = await Registry.open(tmp_path / "models", FAST)
    try:
        assert (await events(reg.pull(f"{front.host}/{TINY}", insecure=True)))[-1].status == "success"
        assert gets_of(front, tiny.digest)[0] == status and gets_of(front, tiny.digest)[1:] in ([200], [206])
        assert file_digest(Path((await reg.resolve(f"{front.host}/{TINY}")).model_path)) == tiny.digest
    finally:
        await reg.close()


async def test_retry_after_is_honoured(front: Front, tiny: TinyGGUF, tmp_path: Path) -> None:
    times: list[float] = []
    front.answer = first_answered(tiny.digest, (429, {"Retry-After": "1"}, b""), times)
    reg = await Registry.open(tmp_path / "models", FAST)  # its own backoff would be 0.05 s
    try:
        assert (await events(reg.pull(f"{front.host}/{TINY}", insecure=True)))[-1].status == "success"
        assert len(times) == 2 and times[1] - times[0] >= 0.95
    finally:
        await reg.close()


def test_retry_after_header_forms() -> None:
    def parsed(value: str) -> float | None:
        return retry_after(httpx.Response(429, headers={"Retry-After": value}))

    assert parsed("7") == 7.0
    soon = parsed(format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True))
    assert soon is not None and 25 < soon <= 30
    assert parsed(format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)) == 0.0
    assert parsed("soon") is None and parsed("") is None and parsed("-3") is None


# ---- closing the core with downloads in flight ------------------------------------------------


async def pull_until(reg: Registry, proxy: Proxy, name: str, fraction: float, size: int) -> asyncio.Task[Any]:
    """A pull in its own task, returned once `fraction` of `size` has come through the proxy."""
    task = asyncio.create_task(events(reg.pull(name, insecure=True)))
    while proxy.bytes_down < size * fraction:
        assert not task.done()
        await asyncio.sleep(0.02)
    return task


async def assert_resumes(store: Path, proxy: Proxy, name: str, big: TinyGGUF) -> None:
    """A fresh core on `store` finds the saved parts and fetches only the rest."""
    proxy.rate, proxy.bytes_down = 0, 0
    reg = await Registry.open(store, FAST)
    try:
        parts = await reg.index.get_parts(big.digest)
        assert parts and sum(p.completed for p in parts) > big.size * 0.2
        assert (await events(reg.pull(name, insecure=True)))[-1].status == "success"
        assert proxy.bytes_down < big.size * 0.8
        assert file_digest(Path((await reg.resolve(name)).model_path)) == big.digest
        assert await reg.index.get_parts(big.digest) == []
    finally:
        await reg.close()


def assert_no_loop_errors(loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    assert [c.get("message") for c in loop_errors] == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_close_during_a_pull(
    oci: OciRegistry,
    published: None,
    big: TinyGGUF,
    tmp_path: Path,
    loop_errors: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = Proxy(oci.host, rate=4 << 20)
    try:
        name, store = f"{proxy.host}/{BIG}", tmp_path / "models"
        reg = await Registry.open(store, FINAL_SAVE_ONLY)
        pull = await pull_until(reg, proxy, name, 0.4, big.size)
        await reg.close()  # the service stops while the pull is still running
        with pytest.raises(CorralError) as err:
            await pull
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert err.value.message == "the registry is shutting down; pull again to resume"
        assert_no_loop_errors(loop_errors, caplog)
        await assert_resumes(store, proxy, name, big)
    finally:
        proxy.close()


async def test_close_after_a_cancelled_pull(
    oci: OciRegistry,
    published: None,
    big: TinyGGUF,
    tmp_path: Path,
    loop_errors: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = Proxy(oci.host, rate=4 << 20)
    try:
        name, store = f"{proxy.host}/{BIG}", tmp_path / "models"
        reg = await Registry.open(store, FINAL_SAVE_ONLY)
        pull = await pull_until(reg, proxy, name, 0.4, big.size)
        pull.cancel()  # the client went away; a server stopping cancels it again
        await asyncio.sleep(0)
        pull.cancel()
        await reg.close()  # without waiting for the cancelled pull to wind down
        with pytest.raises(asyncio.CancelledError):
            await pull
        assert_no_loop_errors(loop_errors, caplog)
        await assert_resumes(store, proxy, name, big)
    finally:
        proxy.close()
