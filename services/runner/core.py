"""The runner's state: loaded instances by id, one load at a time."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from corral.errors import CorralError
from corral.logs import fields
from corral.v1 import common_pb2
from services.runner.blobs import BlobCache
from services.runner.devices import DeviceInfo, DeviceProbe
from services.runner.embed import EmbedInput, embed
from services.runner.engine import GenerationStream, Instance, LoadInfo
from services.runner.jobs import GenerateSpec
from services.runner.native import LoadSpec, NativeModel
from services.runner.promptcache import PromptCache
from services.runner.rerank import rerank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceState:
    instance_id: str
    model_path: str
    info: LoadInfo | None  # None while loading
    active_sequences: int
    queued_requests: int
    load_progress: float = 1.0


def blob_refs(spec: LoadSpec) -> list[tuple[str, str]]:
    """(path, digest) of the model, then of each adapter, then of the draft model if any."""
    digests = [*spec.adapter_digests, *[""] * len(spec.adapters)]  # "" where none was given
    refs = [(spec.model_path, spec.model_digest), *zip((p for p, _s in spec.adapters), digests, strict=False)]
    if spec.draft_model_path:
        refs.append((spec.draft_model_path, spec.draft_model_digest))
    return refs


class Runner:
    def __init__(
        self,
        runner_id: str,
        probe: DeviceProbe,
        blobs: BlobCache | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        """`blobs` fetches what this host cannot open from the registry; None = load paths as given.
        `prompt_cache` keeps prompt KV across requests for all instances; None = off."""
        self.runner_id = runner_id
        self.prompt_cache = prompt_cache
        self.probe = probe
        self.blobs = blobs
        self._instances: dict[str, Instance] = {}
        self._loading: dict[str, Instance] = {}  # reported by status() with their progress
        self._load_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    def devices(self) -> list[DeviceInfo]:
        """The runner's devices with current memory figures, in the runner's order."""
        return self.probe.probe()

    def instance_ids(self) -> list[str]:
        return list(self._instances)

    def _get(self, instance_id: str) -> Instance:
        inst = self._instances.get(instance_id)
        if inst is None:
            raise CorralError(
                common_pb2.ERROR_REASON_INSTANCE_NOT_FOUND, f"model instance {instance_id!r} is not loaded"
            )
        return inst

    async def load(self, instance_id: str, spec: LoadSpec) -> LoadInfo:
        """Loads an instance; loading an id that is already loaded returns its info."""
        if not instance_id:
            raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "instance_id is required")
        async with self._load_lock:
            existing = self._instances.get(instance_id)
            if existing is not None and existing.info is not None:  # already loaded: idempotent
                if existing.spec.model_path != spec.model_path:
                    raise CorralError(
                        common_pb2.ERROR_REASON_INVALID_ARGUMENT,
                        f"instance {instance_id!r} is already loaded with another model",
                    )
                return existing.info
            inst = Instance(instance_id, spec, self.prompt_cache)
            self._loading[instance_id] = inst
            try:
                local = await self._localize(spec, inst)  # cancelled: the fetch stops, resumable
                info = await asyncio.shield(inst.start(local))
            except asyncio.CancelledError:
                # The caller gave up; do not leak a model nobody knows about.
                task = asyncio.get_running_loop().create_task(inst.stop())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                raise
            finally:
                self._loading.pop(instance_id, None)
            self._instances[instance_id] = inst
        log.info(
            "loaded instance",
            extra=fields(instance_id=instance_id, model=spec.model_path, load_ms=info.load_duration_ns // 1_000_000),
        )
        return info

    async def _localize(self, spec: LoadSpec, inst: Instance) -> LoadSpec:
        """`spec` with paths this host can open, fetching the blobs it cannot see (in the
        instance's load progress)."""
        if self.blobs is None:
            return spec
        try:
            model, *others = await self.blobs.ensure_all(blob_refs(spec), inst.progress)
        except CorralError as err:
            # A missing or corrupt blob in the store is the server's failure to load, not a bad request.
            if err.reason in (common_pb2.ERROR_REASON_DIGEST_MISMATCH, common_pb2.ERROR_REASON_BLOB_NOT_FOUND):
                raise CorralError(common_pb2.ERROR_REASON_LOAD_FAILED, err.message) from err
            raise
        adapters, draft = others[: len(spec.adapters)], others[len(spec.adapters) :]
        return replace(
            spec,
            model_path=str(model),
            adapters=tuple((str(path), scale) for path, (_p, scale) in zip(adapters, spec.adapters, strict=True)),
            draft_model_path=str(draft[0]) if draft else "",
        )

    async def unload(self, instance_id: str) -> bool:
        inst = self._instances.pop(instance_id, None)
        if inst is None:
            return False
        await inst.stop()
        log.info("unloaded instance", extra=fields(instance_id=instance_id))
        return True

    async def unload_all(self) -> None:
        for instance_id in list(self._instances):
            await self.unload(instance_id)

    def status(self) -> list[InstanceState]:
        return [
            InstanceState(i.id, i.spec.model_path, i.info, i.active_sequences, i.queued_requests, i.load_progress)
            for i in [*self._instances.values(), *self._loading.values()]
        ]

    def gauges(self) -> list[tuple[str, int, int, int, int]]:
        """Per loaded instance: id, active sequences, queued requests, KV cells used and in all."""
        return [
            (i.id, i.active_sequences, i.queued_requests, i.kv_cells_used, i.info.context_length * i.info.num_parallel)
            for i in self._instances.values()
            if i.info is not None
        ]

    def generate(self, instance_id: str, spec: GenerateSpec) -> GenerationStream:
        return self._get(instance_id).generate(spec)

    async def embed(
        self, instance_id: str, inputs: list[EmbedInput], truncate: bool, normalize: bool, num_ctx: int = 0
    ) -> tuple[list[list[float]], int]:
        return await self._get(instance_id).call(lambda nm: embed(nm, inputs, truncate, normalize, num_ctx))

    async def rerank(
        self, instance_id: str, query: str, documents: list[str], truncate: bool, num_ctx: int = 0
    ) -> tuple[list[float], int]:
        return await self._get(instance_id).call(lambda nm: rerank(nm, query, documents, truncate, num_ctx))

    async def tokenize(self, instance_id: str, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return await self._get(instance_id).call(lambda nm: nm.tokenize(text, add_special, parse_special))

    async def detokenize(self, instance_id: str, tokens: list[int]) -> str:
        def run(nm: NativeModel) -> str:
            if any(t < 0 or t >= nm.n_vocab for t in tokens):
                raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "token id out of range")
            return nm.detokenize(tokens)

        return await self._get(instance_id).call(run)
