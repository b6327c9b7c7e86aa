"""Option values the runner's protobuf fields cannot hold are the client's 400, not a 500."""

from __future__ import annotations

import math

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.gateway.options import to_load, to_sampling


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"seed": 10**20}, "seed"),
        ({"num_predict": 2**31}, "num_predict"),
        ({"temperature": 1e300}, "temperature"),
        ({"top_p": math.nan}, "top_p"),
        ({"repeat_penalty": -math.inf}, "repeat_penalty"),
    ],
)
def test_a_value_the_field_cannot_hold_is_invalid(options: dict[str, object], name: str) -> None:
    with pytest.raises(CorralError) as exc:
        to_sampling(options)
    assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT
    assert exc.value.message == f'option "{name}" is out of range'


def test_load_options_too() -> None:
    with pytest.raises(CorralError, match='"num_ctx" is out of range'):
        to_load({"num_ctx": 10**12})


def test_values_in_range_pass() -> None:
    out = to_sampling({"seed": 2**31 - 1, "temperature": 0.5, "num_predict": -1})
    assert (out.seed, out.temperature, out.num_predict) == (2**31 - 1, 0.5, -1)
