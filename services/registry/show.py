"""ShowModel: what `ollama show` / `/api/show` report about a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.modelfile import format_modelfile, format_parameters
from services.registry.gguf_meta import TensorInfo
from services.registry.manifest import MEDIA_ADAPTER, MEDIA_DRAFT, MEDIA_MODEL, MEDIA_PROJECTOR
from services.registry.model import StoredModel

SHOW_ARRAY_LIMIT = 5  # Ollama replaces longer arrays by [] unless verbose
_HIDDEN_KEYS = ("general.name", "tokenizer.chat_template")


@dataclass(frozen=True)
class ShowResult:
    model: StoredModel
    license: str
    modelfile: str
    parameters: str
    template: str
    system: str
    model_info: dict[str, Any]
    messages: list[tuple[str, str]]
    tensors: list[TensorInfo]


def model_info(m: StoredModel, verbose: bool) -> dict[str, Any]:
    if m.gguf is None:
        return {}
    out: dict[str, Any] = {}
    for key, value in m.gguf.kv.items():
        if key in _HIDDEN_KEYS:
            continue
        if isinstance(value, list) and (key in m.gguf.elided_arrays or (not verbose and len(value) > SHOW_ARRAY_LIMIT)):
            value = []  # elided: the reader keeps only short arrays
        out[key] = value
    return out


def show(
    m: StoredModel, blob_path: Callable[[str], Path], *, verbose: bool, system: str | None, options: dict[str, Any]
) -> ShowResult:
    params = {**m.parameters, **options}
    system_text = m.system if system is None else system
    template = m.template or m.gguf_chat_template
    paths = {kind: [str(blob_path(la.digest)) for la in m.layers if la.media_type == kind]
             for kind in (MEDIA_MODEL, MEDIA_PROJECTOR, MEDIA_ADAPTER, MEDIA_DRAFT)}  # fmt: skip
    modelfile = format_modelfile(
        m.name,
        paths[MEDIA_MODEL] + paths[MEDIA_PROJECTOR],
        paths[MEDIA_ADAPTER],
        m.template,
        system_text,
        params,
        list(m.licenses),
        list(m.messages),
        draft=next(iter(paths[MEDIA_DRAFT]), ""),
    )
    return ShowResult(
        model=m,
        license="\n".join(m.licenses),
        modelfile=modelfile,
        parameters=format_parameters(params),
        template=template,
        system=system_text,
        model_info=model_info(m, verbose),
        messages=list(m.messages),
        tensors=list(m.gguf.tensors) if verbose and m.gguf else [],
    )
