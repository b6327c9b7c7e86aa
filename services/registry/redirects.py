"""The other hosts a registry may redirect blob downloads to (`CORRAL_REDIRECT_HOSTS`).

A pattern is a host name (`cdn.example.com`), a wildcard over its subdomains
(`*.r2.cloudflarestorage.com`: one or more labels in front, never the bare domain), or an IP
literal (`127.0.0.2`, `[::1]`, matched exactly), each with an optional `:port`. Without a
port a pattern matches only the default port of the target's scheme (443 for https, 80 for
http). Names compare case-insensitively and as text: nothing is resolved, so `localhost`
does not match `127.0.0.1`. Only http and https targets can match.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def _ip(host: str) -> str | None:
    """`host` in the canonical form of its IP address, or None when it is not one."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def normal_host(host: str) -> str:
    """Lower case, no trailing dot, IP literals in canonical form (`::0:1` -> `::1`)."""
    host = host.lower().rstrip(".")
    return _ip(host) or host


def _is_name(host: str) -> bool:
    return 0 < len(host) <= 253 and all(_LABEL_RE.match(label) for label in host.split("."))


def _split_port(text: str) -> tuple[str, int | None]:
    """`host[:port]`, `[v6][:port]` or a bare IPv6 address -> (host, port or None)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or _ip(host) is None or ":" not in host:
            raise ValueError("a bracketed host must be an IPv6 address")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("unexpected text after the IPv6 address")
        return host, _port(rest[1:])
    if text.count(":") > 1:  # a bare IPv6 address has no port
        return text, None
    host, colon, port = text.partition(":")
    return host, _port(port) if colon else None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r}")
    return int(text)


@dataclass(frozen=True)
class HostPattern:
    host: str  # lower case; for a wildcard the domain after `*.`; an IP in canonical form
    wildcard: bool = False
    port: int | None = None  # None: the scheme's default port

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """One pattern; ValueError, naming it, when it is not one."""
        try:
            return cls._parse(text.strip().lower())
        except ValueError as exc:
            raise ValueError(f"invalid host pattern {text.strip()!r}: {exc}") from None

    @classmethod
    def _parse(cls, text: str) -> HostPattern:
        if not text:
            raise ValueError("empty")
        if "/" in text or "@" in text:
            raise ValueError("give a host, not a URL")
        host, port = _split_port(text)
        wildcard = host.startswith("*.")
        if wildcard:
            host = host[2:]
        host = host.rstrip(".")
        ip = _ip(host)
        if ip is not None:
            if wildcard:
                raise ValueError("a wildcard needs a domain name, not an IP address")
            return cls(ip, False, port)
        if not _is_name(host):
            raise ValueError("`*` may only stand alone as the first label (`*.example.com`)" if "*" in host
                             else "not a host name")  # fmt: skip
        return cls(host, wildcard, port)

    def matches(self, host: str, port: int, default_port: int) -> bool:
        """Whether `host` (see normal_host) and `port` match; `default_port` is the scheme's."""
        if port != (default_port if self.port is None else self.port):
            return False
        if not self.wildcard:
            return host == self.host
        return _ip(host) is None and host.endswith("." + self.host)


@dataclass(frozen=True)
class RedirectHosts:
    """The allow-list; empty (the default) allows no other host."""

    patterns: tuple[HostPattern, ...] = ()

    @classmethod
    def parse(cls, items: Iterable[str]) -> RedirectHosts:
        return cls(tuple(HostPattern.parse(item) for item in items if item.strip()))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def allows(self, url: str) -> bool:
        """Whether an absolute http(s) `url`'s host and port match a pattern."""
        parts = urlsplit(url)
        default_port = DEFAULT_PORTS.get(parts.scheme.lower())
        if default_port is None or not parts.hostname:
            return False
        try:
            port = parts.port or default_port
        except ValueError:  # not a number or out of range
            return False
        host = normal_host(parts.hostname)
        return any(p.matches(host, port, default_port) for p in self.patterns)

    def __str__(self) -> str:
        return ", ".join(_show(p) for p in self.patterns)


def _show(p: HostPattern) -> str:
    host = f"[{p.host}]" if ":" in p.host else p.host
    host = f"*.{host}" if p.wildcard else host
    return host if p.port is None else f"{host}:{p.port}"
