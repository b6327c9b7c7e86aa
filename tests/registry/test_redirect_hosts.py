"""The CORRAL_REDIRECT_HOSTS patterns: parsing and matching, without any network."""

from __future__ import annotations

import pytest

from corral.config import Settings
from services.registry.main import redirect_hosts
from services.registry.redirects import HostPattern, RedirectHosts


def allows(patterns: str, url: str) -> bool:
    return RedirectHosts.parse(patterns.split(",")).allows(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://abc123.r2.cloudflarestorage.com/ollama/docker/registry/v2/blobs/sha256/aa/data?X-Amz-Signature=1",
        "https://a.b.r2.cloudflarestorage.com/x",  # several labels
        "https://ABC.R2.CloudflareStorage.COM/x",  # case-insensitive
        "https://abc.r2.cloudflarestorage.com./x",  # a trailing dot is the same name
        "https://abc.r2.cloudflarestorage.com:443/x",  # the default port, spelled out
    ],
)
def test_a_wildcard_matches_subdomains(url: str) -> None:
    assert allows("*.r2.cloudflarestorage.com", url)


@pytest.mark.parametrize(
    "url",
    [
        "https://r2.cloudflarestorage.com/x",  # the bare domain is not a subdomain
        "https://evilr2.cloudflarestorage.com/x",  # a suffix, not a label
        "https://r2.cloudflarestorage.com.evil.example/x",
        "https://abc.r2.cloudflarestorage.com:8443/x",  # another port
        "ftp://abc.r2.cloudflarestorage.com/x",  # not http(s)
        "https://abc.r2.cloudflarestorage.com:bad/x",
        "/relative/path",
    ],
)
def test_a_wildcard_matches_nothing_else(url: str) -> None:
    assert not allows("*.r2.cloudflarestorage.com", url)


def test_the_bare_domain_only_when_listed() -> None:
    both = "*.example.com, example.com"
    assert allows(both, "https://example.com/x") and allows(both, "https://cdn.example.com/x")
    assert not allows("cdn.example.com", "https://example.com/x")
    assert not allows("cdn.example.com", "https://a.cdn.example.com/x")  # no implied subdomains


def test_ports() -> None:
    # No port: the scheme's default only (443 for https, 80 for http).
    assert allows("cdn.example.com", "https://cdn.example.com/x")
    assert allows("cdn.example.com", "http://cdn.example.com/x")
    assert not allows("cdn.example.com", "https://cdn.example.com:8443/x")
    assert allows("cdn.example.com:8443", "https://cdn.example.com:8443/x")
    assert not allows("cdn.example.com:8443", "https://cdn.example.com/x")
    assert allows("*.example.com:8443", "http://a.example.com:8443/x")


def test_ip_literals_match_exactly() -> None:
    assert allows("127.0.0.2:8080", "http://127.0.0.2:8080/x")
    assert not allows("127.0.0.2:8080", "http://127.0.0.3:8080/x")
    assert not allows("127.0.0.2", "http://127.0.0.2:8080/x")
    assert not allows("localhost:8080", "http://127.0.0.1:8080/x")  # names are not resolved
    assert allows("[::1]:8443", "https://[::1]:8443/x")
    assert allows("[0:0::1]:8443", "https://[::1]:8443/x")  # the same address, spelled otherwise
    assert allows("::1", "https://[::1]/x")
    assert not allows("[::1]", "https://[::2]/x")
    # A wildcard over a name never matches an IP address that happens to end like it.
    assert not allows("*.example.com", "https://1.2.3.4/x")


def test_parsing() -> None:
    assert HostPattern.parse(" *.R2.CloudflareStorage.com ") == HostPattern("r2.cloudflarestorage.com", True, None)
    assert HostPattern.parse("cdn.example.com:8443") == HostPattern("cdn.example.com", False, 8443)
    assert HostPattern.parse("[::1]:8443") == HostPattern("::1", False, 8443)
    assert HostPattern.parse("127.0.0.2") == HostPattern("127.0.0.2", False, None)
    hosts = RedirectHosts.parse(["*.r2.cloudflarestorage.com", "", " ", "[::1]:8443", "cdn.example.com:80"])
    assert str(hosts) == "*.r2.cloudflarestorage.com, [::1]:8443, cdn.example.com:80"
    assert not RedirectHosts.parse([]) and not RedirectHosts()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("*", "`*` may only stand alone"),
        ("*.*.example.com", "`*` may only stand alone"),
        ("cdn*.example.com", "`*` may only stand alone"),
        ("*.127.0.0.1", "a wildcard needs a domain name"),
        ("https://cdn.example.com", "give a host, not a URL"),
        ("cdn.example.com/path", "give a host, not a URL"),
        ("user@cdn.example.com", "give a host, not a URL"),
        ("cdn.example.com:", "bad port"),
        ("cdn.example.com:0", "bad port"),
        ("cdn.example.com:65536", "bad port"),
        ("[cdn.example.com]", "must be an IPv6 address"),
        ("[::1]x", "unexpected text"),
        ("cdn..example.com", "not a host name"),
        ("-cdn.example.com", "not a host name"),
        ("cdn example.com", "not a host name"),
    ],
)
def test_bad_patterns_are_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError) as err:
        HostPattern.parse(text)
    assert str(err.value).startswith(f"invalid host pattern {text!r}: ")
    assert why in str(err.value)


def test_settings_to_service() -> None:
    assert Settings.from_env({}).redirect_hosts == ()
    assert not redirect_hosts(Settings.from_env({}))  # the default: no other host
    value = " *.r2.cloudflarestorage.com , 127.0.0.2:8080,,"
    settings = Settings.from_env({"CORRAL_REDIRECT_HOSTS": value})
    assert settings.redirect_hosts == ("*.r2.cloudflarestorage.com", "127.0.0.2:8080")
    hosts = redirect_hosts(settings)
    assert hosts.allows("https://x.r2.cloudflarestorage.com/blob") and hosts.allows("http://127.0.0.2:8080/blob")
    with pytest.raises(ValueError, match=r"CORRAL_REDIRECT_HOSTS: invalid host pattern '\*'"):
        redirect_hosts(Settings.from_env({"CORRAL_REDIRECT_HOSTS": "cdn.example.com,*"}))
