"""Every option a request or a Modelfile PARAMETER may set: one table, read from the protos.

SamplingOptions lists the per-request options and LoadOptions the load-time ones, so
names and types come from their descriptors. The gateway checks request `options`
against this table, the Modelfile parser types PARAMETER values with it, and the
runner reads SamplingOptions field by field (tests/test_options_table.py holds the
three together).
"""

from __future__ import annotations

from typing import Any, Literal

from google.protobuf.descriptor import FieldDescriptor

from corral.v1 import common_pb2

Kind = Literal["int", "float", "bool", "list", "map"]

# LoadOptions a user may set; the rest (num_parallel, adapters, draft, kv_cache_type,
# flash_attention, tensor_split) are the scheduler's decisions or Modelfile commands.
USER_LOAD = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict")

_SCALAR: dict[int, Kind] = {
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_DOUBLE: "float",
    FieldDescriptor.TYPE_INT32: "int",
    FieldDescriptor.TYPE_INT64: "int",
    FieldDescriptor.TYPE_UINT32: "int",
    FieldDescriptor.TYPE_BOOL: "bool",
}


def field_kind(field: Any) -> Kind:
    """The kind of a FieldDescriptor (Any: the stubs type it as two unrelated classes)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return "map"
    if field.is_repeated:
        return "list"
    return _SCALAR[field.type]


def _table(message: Any, names: tuple[str, ...] | None = None) -> dict[str, Kind]:
    fields = message.fields if names is None else [message.fields_by_name[n] for n in names]
    return {f.name: field_kind(f) for f in fields}


SAMPLING: dict[str, Kind] = _table(common_pb2.SamplingOptions.DESCRIPTOR)
LOAD: dict[str, Kind] = _table(common_pb2.LoadOptions.DESCRIPTOR, USER_LOAD)
# What a Modelfile PARAMETER may name: a map has no one-line form.
PARAMETERS: dict[str, Kind] = {name: kind for name, kind in {**SAMPLING, **LOAD}.items() if kind != "map"}
