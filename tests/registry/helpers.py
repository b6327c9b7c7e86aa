"""Shared helpers of the registry tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from services.registry.core import Registry
from services.registry.create import CreateRequest, Progress
from tests.ggufs import TinyGGUF

JINJA_WITH_TOOLS = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"


async def file_chunks(path: Path, size: int = 64 << 10) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


async def upload(reg: Registry, gguf: TinyGGUF) -> str:
    await reg.write_blob(gguf.digest, file_chunks(gguf.path))
    return gguf.digest


async def create(reg: Registry, req: CreateRequest) -> list[Progress]:
    return [event async for event in reg.create(req)]


async def events(stream: AsyncIterator[Progress]) -> list[Progress]:
    return [e async for e in stream]


async def publish(reg: Registry, gguf: TinyGGUF, name: str) -> list[Progress]:
    """Upload `gguf`, create `name` from it and push it (the name carries the registry host)."""
    await upload(reg, gguf)
    await create(reg, CreateRequest(name=name, files={"m.gguf": gguf.digest}, system="be brief"))
    return await events(reg.push(name, insecure=True))


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def read_bytes(path: Path | str) -> bytes:
    return Path(path).read_bytes()


def is_file(path: Path | str) -> bool:
    return Path(path).is_file()


def paths_below(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def remove_index(models_dir: Path) -> None:
    for f in models_dir.glob("index.db*"):
        f.unlink()


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def touch(path: Path) -> None:
    """Rewrite a file in place with a new mtime, as another process would."""
    data = path.read_bytes()
    path.write_bytes(data + b" ")
    path.write_bytes(data)
