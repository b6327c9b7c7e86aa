"""Manifests and config blobs in Ollama's (Docker v2) schema.

Serialisation matches Go's json.Encoder (compact, trailing newline, struct
field order) so manifests we write are byte-compatible with Ollama's and the
API digest (sha256 of the file bytes) means the same thing in both.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

from services.registry.digests import try_parse_digest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"

_OLLAMA = "application/vnd.ollama.image."
MEDIA_MODEL = _OLLAMA + "model"
MEDIA_ADAPTER = _OLLAMA + "adapter"
MEDIA_PROJECTOR = _OLLAMA + "projector"
MEDIA_DRAFT = _OLLAMA + "draft"  # a smaller GGUF for speculative decoding
MEDIA_TEMPLATE = _OLLAMA + "template"
MEDIA_PROMPT = _OLLAMA + "prompt"  # legacy spelling of template
MEDIA_SYSTEM = _OLLAMA + "system"
MEDIA_PARAMS = _OLLAMA + "params"
MEDIA_MESSAGES = _OLLAMA + "messages"
MEDIA_LICENSE = _OLLAMA + "license"

MAX_MANIFEST_BYTES = 16 << 20  # safetensors manifests list one layer per tensor


class ManifestError(ValueError):
    """A manifest or config blob that cannot be parsed."""


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str  # canonical "sha256:<hex>"
    size: int
    from_: str = ""
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Layer:
        if not isinstance(obj, dict):
            raise ManifestError("layer is not an object")
        digest = try_parse_digest(str(obj.get("digest", "")))
        size = obj.get("size", 0)
        if digest is None or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError("layer has an invalid digest or size")
        return cls(
            media_type=str(obj.get("mediaType", "")),
            digest=digest,
            size=size,
            from_=str(obj.get("from") or ""),
            name=str(obj.get("name") or ""),
        )


@dataclass(frozen=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...] = field(default_factory=tuple)
    schema_version: int = 2
    media_type: str = MANIFEST_MEDIA_TYPE

    @property
    def size(self) -> int:
        """Ollama's model size: all layers plus the config."""
        return self.config.size + sum(layer.size for layer in self.layers)

    def first(self, media_type: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.media_type == media_type), None)

    def to_bytes(self) -> bytes:
        obj = {
            "schemaVersion": self.schema_version,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return go_json(obj)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("layers", []), list):
            raise ManifestError("manifest is not an object with a layer list")
        schema = obj.get("schemaVersion", 2)
        return cls(
            config=Layer.from_json(obj.get("config")),
            layers=tuple(Layer.from_json(layer) for layer in obj.get("layers") or []),
            schema_version=schema if isinstance(schema, int) else 2,
            media_type=str(obj.get("mediaType", MANIFEST_MEDIA_TYPE)),
        )


def go_json(obj: Any, *, sort_keys: bool = False) -> bytes:
    """JSON as Go's json.Encoder writes it: compact, HTML-escaped, trailing newline."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return (text + "\n").encode()


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber: 268098176 -> "268.10M", 8030261248 -> "8.0B"."""
    for scale, suffix, decimals in ((1_000_000_000, "B", 1), (1_000_000, "M", 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{suffix}" if value.is_integer() else f"{value:.{decimals}f}{suffix}"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


def go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def go_os() -> str:
    return {"win32": "windows", "cygwin": "windows"}.get(sys.platform, sys.platform)


def new_config(family: str, parameter_size: str, file_type: str) -> dict[str, Any]:
    """A config blob body for a GGUF model, in ConfigV2 field order (rootfs added on write)."""
    return {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family] if family else [],
        "model_type": parameter_size,
        "file_type": file_type,
        "architecture": go_arch(),
        "os": go_os(),
    }


def config_bytes(config: dict[str, Any], layers: tuple[Layer, ...]) -> bytes:
    """Serialise a config, recording the layer digests in rootfs as Ollama does."""
    body = dict(config)
    body["rootfs"] = {"type": "layers", "diff_ids": [layer.digest for layer in layers]}
    return go_json(body)


def parse_config(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"config is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ManifestError("config is not an object")
    return obj
