"""The Modelfile parser on arbitrary and Modelfile-shaped text: a spec or INVALID_ARGUMENT
with a line number; what `show --modelfile` prints parses back to the same values."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from corral.errors import CorralError
from corral.modelfile import ModelfileSpec, parse_spec, quote
from corral.v1 import common_pb2
from tests.fuzz.bounds import bounded

WORDS = [
    "FROM", "from", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES",
    "user", "assistant", "system", "temperature", "num_ctx", "stop", "seed", "top_k", "mirostat",
    "penalize_newline", "use_mmap", "unknown_param", "#", '"', '"""', "'", "'''", "\n", " ", "\t",
    "\r\n", "\ufeff", "1", "-1", "0.5", "1e9", "nan", "inf", "true", "v0.14.0", "./model.gguf",
    "llama3:8b", "{{ .Prompt }}",
]  # fmt: skip


def _parse(text: str) -> ModelfileSpec | None:
    with bounded(seconds=5):
        try:
            return parse_spec(text)
        except CorralError as err:
            assert err.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT, err
            assert err.message
            return None


@given(st.text(max_size=400))
def test_any_text(text: str) -> None:
    _parse(text)
    _parse("FROM x\n" + text)


@given(st.lists(st.sampled_from(WORDS) | st.text(max_size=6), max_size=40))
def test_modelfile_shaped_text(tokens: list[str]) -> None:
    _parse(" ".join(tokens))
    _parse("".join(tokens))


# Non-printable runes are dropped by the parser (as by Ollama's), so they cannot round-trip.
_VALUE = st.text(st.characters(codec="utf-8").filter(str.isprintable) | st.sampled_from("\n\t"))


@given(_VALUE)
def test_quoted_values_round_trip(value: str) -> None:
    """SYSTEM and TEMPLATE as `show --modelfile` quotes them come back unchanged."""
    assume(value.strip() and '"""' not in value and not value.endswith('"'))
    spec = _parse(f"FROM x\nSYSTEM {quote(value)}\nTEMPLATE {quote(value)}\n")
    assert spec is not None, quote(value)
    assert (spec.system, spec.template) == (value, value)
