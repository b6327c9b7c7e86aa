"""CreateModel: build a manifest from uploaded GGUF blobs or an existing model.

Follows Ollama's CreateHandler/createModel (server/create.go): validation
errors and their messages, the order of layers (weights, template, system,
licenses, params) and the progress statuses.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError
from corral.modelfile import check_requires, parse_spec
from corral.v1 import common_pb2
from services.registry.convert import is_safetensors_model
from services.registry.convert.jobs import convert_job, quantize_job, stage
from services.registry.digests import INVALID_DIGEST_MESSAGE, try_parse_digest
from services.registry.gguf_meta import GGUFInfo
from services.registry.manifest import (
    CONFIG_MEDIA_TYPE,
    MEDIA_ADAPTER,
    MEDIA_DRAFT,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
    config_bytes,
    go_json,
    human_number,
    new_config,
)
from services.registry.names import parse_name

if TYPE_CHECKING:
    from services.registry.core import Registry

_INVALID_ARGUMENT = common_pb2.ERROR_REASON_INVALID_ARGUMENT
QUANTIZE_TYPES = ("F32", "F16", "BF16", "Q4_K_S", "Q4_K_M", "Q8_0")
_QUANTIZE_ALIASES = {"Q4_K": "Q4_K_M"}


@dataclass(frozen=True)
class CreateRequest:
    name: str
    from_: str = ""
    files: dict[str, str] = field(default_factory=dict)  # relative file name -> digest
    adapters: dict[str, str] = field(default_factory=dict)
    draft_files: dict[str, str] = field(default_factory=dict)  # the draft model; empty keeps the parent's
    template: str | None = None  # None: keep the parent's; "": remove it
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # merged over the parent's
    license: tuple[str, ...] = ()
    quantize: str = ""
    messages: tuple[tuple[str, str], ...] | None = None  # None: keep the parent's
    modelfile: str = ""  # Modelfile text; the fields above override it
    requires: str = ""  # minimum server version (semver); "" keeps the parent's


@dataclass(frozen=True)
class Progress:
    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


def _invalid(message: str) -> CorralError:
    return CorralError(_INVALID_ARGUMENT, message)


def _is_relative_path(path: str) -> bool:
    """Go's fs.ValidPath, and no Windows drive letters or backslashes either."""
    if path == ".":
        return True
    if not path or "\\" in path or "\x00" in path or re.match(r"[A-Za-z]:", path):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def validate_files(files: dict[str, str]) -> dict[str, str]:
    """Check names and digests of a files/adapters map; returns canonical digests."""
    for path in files:
        if not _is_relative_path(path):
            raise CorralError(common_pb2.ERROR_REASON_INVALID_PATH, "file path must be relative")
    out: dict[str, str] = {}
    for path, value in files.items():
        digest = try_parse_digest(value)
        if digest is None:
            raise CorralError(common_pb2.ERROR_REASON_INVALID_DIGEST, INVALID_DIGEST_MESSAGE)
        out[path] = digest
    return out


def _media_type(info: GGUFInfo) -> str:
    if info.general_type == "adapter":
        return MEDIA_ADAPTER
    if info.general_type in ("mmproj", "projector") or info.architecture == "clip":
        return MEDIA_PROJECTOR
    return MEDIA_MODEL


def _check_quantize(requested: str, source: GGUFInfo | None) -> str:
    """The canonical target type (services/registry/convert/quantize.py does the work)."""
    want = _QUANTIZE_ALIASES.get(requested.upper(), requested.upper())
    if want not in QUANTIZE_TYPES:
        supported = ", ".join(t for t in QUANTIZE_TYPES if t != "BF16")
        raise _invalid(f"unsupported quantization type {requested} - supported types are {supported}")
    if source is None or source.file_type_name not in ("F16", "BF16", "F32"):
        raise _invalid("quantization is only supported for F16, BF16 and F32 models")
    return want


def _plain(value: Any) -> Any:
    """Struct numbers arrive as floats; write whole numbers as Go would (4096, not 4096.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _blob_ref(value: str) -> str | None:
    """A FROM/ADAPTER value naming a blob: "@sha256:<hex>" or "sha256:<hex>"."""
    return try_parse_digest(value.removeprefix("@"))


def apply_modelfile(req: CreateRequest) -> CreateRequest:
    """Fold a Modelfile into the request; explicit request fields win."""
    spec = parse_spec(req.modelfile)
    files, from_ = dict(req.files), req.from_
    if not files and not from_:
        digest = _blob_ref(spec.from_)
        if digest is not None:
            files = {digest.replace(":", "-"): digest}
        else:
            from_ = spec.from_
    adapters = dict(req.adapters)
    for value in spec.adapters if not adapters else ():
        digest = _blob_ref(value)
        if digest is None:
            raise _invalid(f"ADAPTER {value}: upload the file as a blob and name it as @sha256:<hex>")
        adapters[digest.replace(":", "-")] = digest
    draft_files = dict(req.draft_files)
    if spec.draft and not draft_files:
        digest = _blob_ref(spec.draft)
        if digest is None:
            raise _invalid(f"DRAFT {spec.draft}: upload the file as a blob and name it as @sha256:<hex>")
        draft_files[digest.replace(":", "-")] = digest
    return replace(
        req,
        modelfile="",
        from_=from_,
        files=files,
        adapters=adapters,
        draft_files=draft_files,
        template=req.template if req.template is not None else spec.template,
        system=req.system if req.system is not None else spec.system,
        parameters={**spec.parameters, **req.parameters},
        license=req.license or tuple(spec.license),
        messages=req.messages if req.messages is not None else (tuple(spec.messages) or None),
        requires=req.requires or spec.requires,
    )


async def create_model(registry: Registry, req: CreateRequest) -> AsyncIterator[Progress]:
    name = parse_name(req.name)
    if req.modelfile:
        yield Progress("parsing modelfile")
        req = apply_modelfile(req)
    files = validate_files(req.files)
    adapters = validate_files(req.adapters)
    if len(adapters) > 1:
        raise _invalid("only one adapter is currently supported")
    drafts = validate_files(req.draft_files)
    if len(drafts) > 1:
        raise _invalid("only one draft model is supported")
    if not req.from_ and not files:
        raise _invalid("neither 'from' or 'files' was specified")

    layers: list[Layer] = []
    weights: GGUFInfo | None = None
    converted: set[str] = set()  # blobs this request wrote (conversion, quantization)
    parent_params: dict[str, Any] = {}
    if req.from_:  # like Ollama, `from` wins when both are given
        parse_name(req.from_)
        parent = await registry.resolve(req.from_)
        layers = [replace(layer, from_=parent.name) for layer in parent.layers]
        config = {k: v for k, v in parent.config.items() if k != "rootfs"}
        weights, parent_params = parent.gguf, parent.parameters
    else:
        if is_safetensors_model(list(files)):
            job = None
            with tempfile.TemporaryDirectory(prefix="corral-convert-") as staged:
                await asyncio.to_thread(stage, registry, files, Path(staged))
                job = convert_job(registry, Path(staged))
                yield Progress("converting model")
                async for done, total in job.run():
                    yield Progress("converting model", total=total, completed=done)
            files = {"model.gguf": job.digest}
            if job.created:
                converted.add(job.digest)
        yield Progress("parsing GGUF")
        for path in sorted(files):
            info = await registry.gguf_info(files[path])
            media_type = _media_type(info)
            if media_type == MEDIA_MODEL:
                if weights is not None:
                    raise _invalid("split or multiple GGUF model files are not supported yet")
                weights = info
            size = await registry.stat_blob(files[path]) or 0
            layers.append(Layer(media_type, files[path], size))
        if weights is None:
            raise _invalid("no model weights were supplied")
        config = new_config(weights.architecture, human_number(weights.parameter_count), weights.file_type_name)
    if req.requires:  # informational, as in Ollama: shown, not enforced
        config = {**config, "requires": check_requires(req.requires)}
    for path in sorted(adapters):
        await registry.gguf_info(adapters[path])  # must be a GGUF
        layers.append(Layer(MEDIA_ADAPTER, adapters[path], await registry.stat_blob(adapters[path]) or 0))
    for digest in drafts.values():  # replaces the parent's draft model
        if _media_type(await registry.gguf_info(digest)) != MEDIA_MODEL:
            raise _invalid("the draft model must be a GGUF model")
        layers = [la for la in layers if la.media_type != MEDIA_DRAFT]
        layers.append(Layer(MEDIA_DRAFT, digest, await registry.stat_blob(digest) or 0))
    if req.quantize:
        want = _check_quantize(req.quantize, weights)
        assert weights is not None
        if want != weights.file_type_name:
            source = next(la for la in reversed(layers) if la.media_type == MEDIA_MODEL)
            status = f"quantizing {weights.file_type_name} model to {want}"
            job = quantize_job(registry, registry.store.blob_path(source.digest), weights.file_type_name, want)
            yield Progress(status)
            async for done, total in job.run():
                yield Progress(status, total=total, completed=done)
            if job.created:
                converted.add(job.digest)
            layers = [Layer(MEDIA_MODEL, job.digest, job.size) if la is source else la for la in layers]
            weights = await registry.gguf_info(job.digest)
            config = {**config, "file_type": weights.file_type_name}

    created: set[str] = set(converted)

    async def text_layer(media_type: str, data: bytes) -> None:
        digest, new = await asyncio.to_thread(registry.store.put_blob, data)
        if new:
            created.add(digest)
        if not any(la.media_type == media_type and la.digest == digest for la in layers):
            layers.append(Layer(media_type, digest, len(data)))

    if req.template is not None:
        layers = [la for la in layers if la.media_type not in (MEDIA_TEMPLATE, MEDIA_PROMPT)]
        if req.template:
            await text_layer(MEDIA_TEMPLATE, req.template.encode())
    if req.system is not None:
        layers = [la for la in layers if la.media_type != MEDIA_SYSTEM]
        if req.system:
            await text_layer(MEDIA_SYSTEM, req.system.encode())
    for text in req.license:
        await text_layer(MEDIA_LICENSE, text.encode())
    if req.parameters:
        merged = {**parent_params, **_plain(req.parameters)}
        layers = [la for la in layers if la.media_type != MEDIA_PARAMS]
        await text_layer(MEDIA_PARAMS, go_json(merged, sort_keys=True))

    if req.messages is not None:
        if any(not role for role, _ in req.messages):
            raise _invalid("message role is required")
        layers = [la for la in layers if la.media_type != MEDIA_MESSAGES]
        if req.messages:
            await text_layer(MEDIA_MESSAGES, go_json([{"role": r, "content": c} for r, c in req.messages]))

    for layer in layers:
        verb = "creating new" if layer.digest in created else "using existing"
        yield Progress(f"{verb} layer {layer.digest}")

    body = config_bytes(config, tuple(layers))
    config_digest, _ = await asyncio.to_thread(registry.store.put_blob, body)
    manifest = Manifest(config=Layer(CONFIG_MEDIA_TYPE, config_digest, len(body)), layers=tuple(layers))
    yield Progress("writing manifest")
    await registry.save_manifest(name, manifest, config)
    yield Progress("success")
