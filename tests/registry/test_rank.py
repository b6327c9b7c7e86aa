"""A cross-encoder GGUF (rank pooling) is a reranker: capability "rank", not "embedding"."""

from __future__ import annotations

from pathlib import Path

from gguf import PoolingType

from services.registry.core import Registry
from services.registry.create import CreateRequest
from tests.ggufs import file_digest
from tests.registry.helpers import create, file_chunks
from tests.runner.bert_gguf import write_tiny_bert


async def test_rank_capability(registry: Registry, tmp_path: Path) -> None:
    for name, pooling in (("rank", PoolingType.RANK), ("cls", PoolingType.CLS)):
        path = write_tiny_bert(tmp_path / f"{name}.gguf", pooling=pooling, classifier=pooling == PoolingType.RANK)
        digest = file_digest(path)
        await registry.write_blob(digest, file_chunks(path))
        await create(registry, CreateRequest(name=name, files={"m.gguf": digest}))
    assert (await registry.resolve("rank")).capabilities == ("rank",)
    assert (await registry.resolve("cls")).capabilities == ("embedding",)
