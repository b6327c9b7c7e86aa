"""Safetensors → GGUF conversion for `create` (see docs/import.md)."""

from __future__ import annotations

from pathlib import Path

from services.registry.convert import bert, llama
from services.registry.convert.base import OUTTYPES, ModelDir, Plan, Progress, invalid, write_gguf

SUPPORTED = (*bert.ARCHITECTURES, *llama.ARCHITECTURES)


def is_safetensors_model(names: list[str]) -> bool:
    """True when `files` names a Hugging Face model directory rather than GGUF blobs."""
    return "config.json" in names and any(n.endswith(".safetensors") for n in names)


def make_plan(md: ModelDir, outtype: str = "f16") -> Plan:
    if outtype not in OUTTYPES:
        raise invalid(f"unsupported conversion type {outtype!r}")
    archs = md.config.get("architectures") or []
    arch = str(archs[0]) if isinstance(archs, list) and archs else str(md.config.get("model_type", ""))
    if arch in bert.ARCHITECTURES:
        return bert.plan(md, outtype)
    if arch in llama.ARCHITECTURES:
        return llama.plan(md, outtype, llama.ARCHITECTURES[arch])
    raise invalid(f'unsupported architecture "{arch}"')


def convert(model_dir: Path, out: Path, outtype: str = "f16", progress: Progress | None = None) -> Plan:
    """Convert the model in `model_dir` to a GGUF file at `out`; returns the plan it wrote."""
    plan = make_plan(ModelDir(model_dir), outtype)
    write_gguf(plan, out, outtype, progress)
    return plan


__all__ = ["SUPPORTED", "convert", "is_safetensors_model", "make_plan"]
