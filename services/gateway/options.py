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
from corral.options import LOAD, SAMPLING, Kind
from corral.v1 import common_pb2, registry_pb2

log = logging.getLogger(__name__)
FLOAT32_MAX = 3.4028234663852886e38


def _out_of_range(name: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, f'option "{name}" is out of range')


def _invalid(name: str, type_name: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, f'option "{name}" must be of type {type_name}')


def _coerce(name: str, kind: Kind, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if kind == "int":
            return int(value)
        if not -FLOAT32_MAX <= value <= FLOAT32_MAX:  # NaN fails this too
            raise _out_of_range(name)
        return float(value)
    raise _invalid(name, {"float": "float32", "int": "integer", "bool": "boolean"}[kind])


def _set(out: Any, name: str, value: Any) -> None:
    """One field of a protobuf message; a number the field cannot hold (1e20 for an int32) is
    the client's error, not the server's."""
    try:
        setattr(out, name, value)
    except (ValueError, TypeError, OverflowError):
        raise _out_of_range(name) from None


def _logit_bias(value: Any) -> dict[int, float]:
    """Token id (an int or its decimal string, as OpenAI sends it) to a bias in [-100, 100]."""
    if not isinstance(value, Mapping):
        raise _invalid("logit_bias", "object")
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise _invalid("logit_bias", "object of token ids") from None
        if not 0 <= token < 2**31:
            raise _invalid("logit_bias", "object of token ids")
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise CorralError(
                common_pb2.ERROR_REASON_INVALID_ARGUMENT, "logit_bias values must be numbers between -100 and 100"
            )
        out[token] = float(bias)
    return out


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
        kind = SAMPLING.get(name)
        if kind is None:
            if name not in LOAD:
                log.warning("invalid option provided", extra={"fields": {"option": name}})
        elif value is None:
            continue
        elif kind == "list":  # stop: one string or a list of them
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
                raise _invalid(name, "array")
            getattr(out, name).extend(items)
        elif kind == "map":  # logit_bias
            getattr(out, name).update(_logit_bias(value))
        else:
            _set(out, name, _coerce(name, kind, value))
    return out


def to_load(options: Mapping[str, Any]) -> common_pb2.LoadOptions:
    out = common_pb2.LoadOptions()
    for name, kind in LOAD.items():
        if options.get(name) is not None:
            _set(out, name, _coerce(name, kind, options[name]))
    return out
