"""One option table (corral.options, read from the protos) drives the gateway, the Modelfile
parser and the runner: adding a SamplingOptions field reaches all three or fails here."""

from __future__ import annotations

import dataclasses

import pytest

from corral import options
from corral.errors import CorralError
from corral.modelfile import parse_spec
from corral.v1 import common_pb2
from services.gateway import options as gateway_options
from services.runner.sampling import SamplingParams

SAMPLE = {"int": 7, "float": 0.5, "bool": True, "list": ["x"], "map": {"5": -100}}
TEXT = {"int": "7", "float": "0.5", "bool": "true", "list": "x"}


def test_the_runner_has_a_default_for_every_sampling_option() -> None:
    assert {f.name for f in dataclasses.fields(SamplingParams)} == set(options.SAMPLING)


def test_every_sampling_option_travels_from_a_request_to_the_runner() -> None:
    request = {name: SAMPLE[kind] for name, kind in options.SAMPLING.items()}
    params = SamplingParams.from_proto(gateway_options.to_sampling(request))
    for name, kind in options.SAMPLING.items():
        want = {"list": ("x",), "map": ((5, -100.0),)}.get(kind, SAMPLE[kind])
        assert getattr(params, name) == want, name


def test_every_user_load_option_travels_to_load_options() -> None:
    load = gateway_options.to_load({name: SAMPLE[kind] for name, kind in options.LOAD.items()})
    assert {f.name for f, _ in load.ListFields()} == set(options.LOAD)


def test_every_parameter_parses_in_a_modelfile_with_its_type() -> None:
    text = "FROM x\n" + "".join(f"PARAMETER {name} {TEXT[kind]}\n" for name, kind in options.PARAMETERS.items())
    spec = parse_spec(text)
    for name, kind in options.PARAMETERS.items():
        assert spec.parameters[name] == ([SAMPLE[kind][0]] if kind == "list" else SAMPLE[kind]), name


def test_a_wrongly_typed_option_names_the_option_and_type() -> None:
    with pytest.raises(CorralError, match='option "top_k" must be of type integer'):
        gateway_options.to_sampling({"top_k": "many"})
    with pytest.raises(CorralError, match="between -100 and 100"):
        gateway_options.to_sampling({"logit_bias": {"1": 101}})
    with pytest.raises(CorralError, match='option "logit_bias" must be of type object of token ids'):
        gateway_options.to_sampling({"logit_bias": {"one": 1}})


def test_user_load_options_are_load_options_fields() -> None:
    assert set(options.USER_LOAD) <= set(common_pb2.LoadOptions.DESCRIPTOR.fields_by_name)
