"""Ollama's model name grammar: `[scheme://][host/][namespace/]model[:tag]`.

Mirrors types/model/name.go: the tag is split at the last `:` only when it comes
after the last `/`, then parts are taken from the right; an empty part between
separators makes the name invalid. Every valid part is also a safe single path
component (no `/`, never `.` or `..`), which is what lets the store build paths
from names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.errors import CorralError
from corral.v1 import common_pb2

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

INVALID_NAME_MESSAGE = "invalid model name"

_MISSING = "!MISSING!"  # contains "!", so it never validates
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG_RE = _MODEL_RE

# `host:port` directories: ":" is not portable (Windows, some network file
# systems), so we write it percent-encoded and read both spellings.
_PORT_SEP_ENCODED = "%3A"


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name; construct it with `parse_name`."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def display_shortest(self) -> str:
        """Ollama's DisplayShortest: "gemma3:latest", "me/m:1", "example.com:5000/me/m:1"."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def full(self) -> str:
        """The fully qualified form, e.g. "registry.ollama.ai/library/gemma3:latest"."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def fold(self) -> tuple[str, str, str, str]:
        """Key for case-insensitive comparison."""
        return (self.host.casefold(), self.namespace.casefold(), self.model.casefold(), self.tag.casefold())

    def __str__(self) -> str:
        return self.full()


def _cut_last(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return s[:i] or _MISSING, s[i + len(sep) :] or _MISSING, True


def _parse_bare(s: str) -> tuple[str, str, str, str]:
    host = namespace = model = tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = _cut_last(s, ":")
    s, model, cut = _cut_last(s, "/")
    if not cut:
        return host, namespace, s, tag
    s, namespace, cut = _cut_last(s, "/")
    if not cut:
        return host, s, model, tag
    scheme, sep, rest = s.partition("://")
    host = rest if sep else scheme
    return host, namespace, model, tag


def is_valid_part(kind: str, value: str) -> bool:
    pattern = {"host": _HOST_RE, "namespace": _NAMESPACE_RE, "model": _MODEL_RE, "tag": _TAG_RE}[kind]
    return pattern.fullmatch(value) is not None


def try_parse_name(s: str) -> ModelName | None:
    """The fully qualified name, or None when `s` is not a valid model name."""
    if not s or len(s) > 1024:
        return None
    host, namespace, model, tag = _parse_bare(s)
    name = ModelName(host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)
    ok = (
        is_valid_part("host", name.host)
        and is_valid_part("namespace", name.namespace)
        and is_valid_part("model", name.model)
        and is_valid_part("tag", name.tag)
    )
    return name if ok else None


def parse_name(s: str) -> ModelName:
    """Parse and fill defaults; raises INVALID_MODEL_NAME."""
    name = try_parse_name(s)
    if name is None:
        raise CorralError(common_pb2.ERROR_REASON_INVALID_MODEL_NAME, INVALID_NAME_MESSAGE)
    return name


def encode_host_dir(host: str) -> str:
    """Directory name for a host: "host:5000" -> "host%3A5000"."""
    return host.replace(":", _PORT_SEP_ENCODED)


def decode_host_dir(entry: str) -> str:
    """Host for a directory name; reads both "host%3A5000" and Ollama's plain "host:5000"."""
    return re.sub("%3a", ":", entry, flags=re.IGNORECASE)


def name_from_dirs(host_dir: str, namespace: str, model: str, tag: str) -> ModelName | None:
    """The name a manifest path spells, or None for foreign files (temp files, junk)."""
    name = ModelName(decode_host_dir(host_dir), namespace, model, tag)
    ok = (
        is_valid_part("host", name.host)
        and is_valid_part("namespace", namespace)
        and is_valid_part("model", model)
        and is_valid_part("tag", tag)
    )
    return name if ok else None
