"""Ollama `options` (and Modelfile PARAMETERs) to the runner's SamplingOptions and LoadOptions.

Layering as Ollama: defaults (in the runner) < model parameters < request options.
Unknown keys are ignored, as Ollama does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from google.protobuf.json_format import MessageToDict

from corral.errors import CorralError
from corral.v1 import common_pb2, registry_pb2

log = logging.getLogger(__name__)

_FLOAT = "float32"
_INT = "int"
_BOOL = "bool"

SAMPLING: dict[str, str] = {
    "temperature": _FLOAT,
    "top_k": _INT,
    "top_p": _FLOAT,
    "min_p": _FLOAT,
    "typical_p": _FLOAT,
    "repeat_penalty": _FLOAT,
    "repeat_last_n": _INT,
    "presence_penalty": _FLOAT,
    "frequency_penalty": _FLOAT,
    "seed": _INT,
    "num_predict": _INT,
    "num_keep": _INT,
    "speculative": _BOOL,
}
LOAD: dict[str, str] = {
    "num_ctx": _INT,
    "num_batch": _INT,
    "num_gpu": _INT,
    "main_gpu": _INT,
    "use_mmap": _BOOL,
    "num_thread": _INT,
}


def _coerce(name: str, kind: str, value: Any) -> Any:
    if kind == _BOOL:
        if isinstance(value, bool):
            return value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return int(value) if kind == _INT else float(value)
    type_name = {"float32": "float32", "int": "integer", "bool": "boolean"}[kind]
    raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, f'option "{name}" must be of type {type_name}')


def model_params(model: registry_pb2.Model) -> dict[str, Any]:
    """The model's PARAMETER layer as a plain dict."""
    return MessageToDict(model.parameters) if model.HasField("parameters") else {}


def merge(model_params: Mapping[str, Any], request_options: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(model_params)
    merged.update(request_options or {})
    return merged


def to_sampling(options: Mapping[str, Any]) -> common_pb2.SamplingOptions:
    out = common_pb2.SamplingOptions()
    for name, value in options.items():
        if name == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, 'option "stop" must be of type array')
            out.stop.extend(stops)
        elif name in SAMPLING and value is not None:
            setattr(out, name, _coerce(name, SAMPLING[name], value))
        elif name not in LOAD:
            log.warning("invalid option provided", extra={"fields": {"option": name}})
    return out


def to_load(options: Mapping[str, Any]) -> common_pb2.LoadOptions:
    out = common_pb2.LoadOptions()
    for name, kind in LOAD.items():
        if options.get(name) is not None:
            setattr(out, name, _coerce(name, kind, options[name]))
    return out
