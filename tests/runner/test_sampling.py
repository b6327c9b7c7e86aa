from __future__ import annotations

from corral.v1 import common_pb2
from services.runner.sampling import SamplingParams


def test_unset_fields_take_ollama_defaults() -> None:
    p = SamplingParams.from_proto(common_pb2.SamplingOptions())
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.typical_p) == (0.8, 40, 0.9, 0.0, 1.0)
    assert (p.repeat_penalty, p.repeat_last_n, p.presence_penalty, p.frequency_penalty) == (1.0, 64, 0.0, 0.0)
    assert p.seed < 0 and p.num_predict < 0 and p.stop == ()


def test_set_fields_override_including_zero() -> None:
    opts = common_pb2.SamplingOptions(temperature=0.0, top_k=0, seed=7, num_predict=3, stop=["x"])
    p = SamplingParams.from_proto(opts)
    assert (p.temperature, p.top_k, p.seed, p.num_predict, p.stop) == (0.0, 0, 7, 3, ("x",))
