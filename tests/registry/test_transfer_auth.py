"""Push and pull against a real registry that wants bearer tokens (distribution's `auth: token`).

The registry is Debian's docker-registry with a real token server on loopback
(`tests/registry/token_server.py`): every request without a token is answered 401
with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`, and the client
has to fetch a token for that scope and retry. Basic credentials for the token
request come from Docker's config file (`$DOCKER_CONFIG/config.json`).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from corral.errors import CorralError
from services.registry.core import Registry
from services.registry.download import TransferSettings
from services.registry.manifest import Manifest
from tests.ggufs import TinyGGUF, file_digest
from tests.registry.helpers import events, publish
from tests.registry.oci import OciRegistry, start_oci_registry
from tests.registry.token_server import TokenServer, grant_all

FAST = TransferSettings(parallel=2, min_part=1 << 20, save_seconds=0.05, backoff_seconds=0.05)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("token"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def oci(tmp_path_factory: pytest.TempPathFactory, tokens: TokenServer) -> Iterator[OciRegistry]:
    reg = start_oci_registry(tmp_path_factory.mktemp("oci-token"), tokens)
    yield reg
    reg.stop()


@pytest.fixture(autouse=True)
def fresh_tokens(tokens: TokenServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # no credentials unless a test writes them
    tokens.clear()
    tokens.grant, tokens.users = grant_all, None
    yield
    tokens.grant, tokens.users = grant_all, None


@pytest.fixture
async def other(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await Registry.open(tmp_path / "other", FAST)
    try:
        yield reg
    finally:
        await reg.close()


def docker_login(tmp_path: Path, entries: dict[str, dict[str, str]]) -> None:
    folder = tmp_path / "docker"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"auths": entries}))


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def statuses(oci: OciRegistry, method: str, path: str, count: int, since: int = 0) -> list[int]:
    """The statuses of the first `count` `method` requests under `path` in the registry's access log.

    The registry writes a request's line just after answering it, so this waits (up to 5 s)
    for that many lines to appear.
    """
    deadline = time.monotonic() + 5
    while True:
        found = [status for m, p, status in oci.access_log()[since:] if m == method and p.startswith(path)]
        if len(found) >= count or time.monotonic() > deadline:
            return found[:count]
        time.sleep(0.02)


def test_the_registry_really_checks_tokens(oci: OciRegistry, tokens: TokenServer, tmp_path: Path) -> None:
    """The fixture itself: no token, a token for the wrong scope, or a forged one are refused."""
    url = f"http://{oci.host}/v2/test/fixture/manifests/v1"
    resp = httpx.get(url)
    assert resp.status_code == 401
    challenge = resp.headers["www-authenticate"]
    assert challenge == (
        f'Bearer realm="{tokens.realm}",service="{tokens.service}",scope="repository:test/fixture:pull"'
    )
    good = tokens.token(None, ["repository:test/fixture:pull"])
    assert httpx.get(url, headers={"Authorization": f"Bearer {good}"}).status_code == 404  # past auth: no such tag
    other_repo = tokens.token(None, ["repository:test/elsewhere:pull"])
    assert httpx.get(url, headers={"Authorization": f"Bearer {other_repo}"}).status_code == 401
    forged = TokenServer(tmp_path, service=tokens.service, issuer=tokens.issuer)  # same claims, another key
    try:
        bad = forged.token(None, ["repository:test/fixture:pull"])
    finally:
        forged.close()
    resp = httpx.get(url, headers={"Authorization": f"Bearer {bad}"})
    assert resp.status_code == 401 and 'error="invalid_token"' in resp.headers["www-authenticate"]


async def test_push_then_pull_through_the_token_flow(
    registry: Registry, other: Registry, oci: OciRegistry, tokens: TokenServer, tiny: TinyGGUF
) -> None:
    name = f"{oci.host}/test/tiny:v1"
    pushed = await publish(registry, tiny, name)
    assert [e.status for e in pushed][-2:] == ["pushing manifest", "success"]

    # Push: a HEAD of each blob asks for pull; starting an upload asks for pull,push.
    scopes = tokens.scopes()
    assert scopes[0] == "repository:test/tiny:pull"
    assert "repository:test/tiny:pull,push" in scopes
    assert set(scopes) == {"repository:test/tiny:pull", "repository:test/tiny:pull,push"}
    assert all(r.service == tokens.service and r.status == 200 for r in tokens.requests)
    blobs, manifest = "/v2/test/tiny/blobs/", "/v2/test/tiny/manifests/v1"
    assert statuses(oci, "HEAD", blobs, 2) == [401, 404]  # challenged, then asked again with a token
    assert statuses(oci, "POST", blobs + "uploads/", 2) == [401, 202]  # a pull token is not enough to push
    assert statuses(oci, "PUT", manifest, 1) == [201]  # the pull,push token was kept

    # Pull into a fresh store: one challenge on the manifest, one token for pull, then no more 401s.
    tokens.clear()
    before = len(oci.access_log())
    pulled = await events(other.pull(name, insecure=True))
    assert pulled[-1].status == "success"
    assert tokens.scopes() == ["repository:test/tiny:pull"]
    assert statuses(oci, "GET", manifest, 2, before) == [401, 200]
    m = Manifest.from_bytes(await other.manifest_bytes(name))
    unique = {layer.digest for layer in (*m.layers, m.config)}  # each smaller than a part: one GET each
    gets = statuses(oci, "GET", blobs, len(unique), before)
    assert len(gets) == len(unique) and set(gets) <= {200, 206}  # the token was reused: no 401
    mine, theirs = await registry.resolve(name), await other.resolve(name)
    assert theirs.manifest_digest == mine.manifest_digest and theirs.system == "be brief"
    assert file_digest(Path(theirs.model_path)) == tiny.digest


async def test_pull_only_grant_cannot_push(registry: Registry, oci: OciRegistry, tokens: TokenServer,
                                           tiny: TinyGGUF) -> None:  # fmt: skip
    tokens.grant = lambda _user, _type, _name, actions: [a for a in actions if a == "pull"]
    with pytest.raises(CorralError) as err:
        await publish(registry, tiny, f"{oci.host}/test/readonly:v1")
    assert err.value.message == "unauthorized: access denied"
    assert "repository:test/readonly:pull,push" in tokens.scopes()
    assert statuses(oci, "POST", "/v2/test/readonly/blobs/uploads/", 2) == [401, 401]


async def test_token_server_refusal_fails_the_pull_cleanly(
    registry: Registry, other: Registry, oci: OciRegistry, tokens: TokenServer, tiny: TinyGGUF
) -> None:
    name = f"{oci.host}/test/private:v1"
    await publish(registry, tiny, name)
    tokens.clear()
    tokens.users = {"alice": "secret"}  # anonymous token requests are now answered 401
    with pytest.raises(CorralError) as err:
        await events(other.pull(name, insecure=True))
    assert err.value.message == "unauthorized: access denied"
    assert [(r.scopes, r.user, r.status) for r in tokens.requests] == [(("repository:test/private:pull",), None, 401)]
    assert await other.list_models() == []
    assert not list(other.store.blobs_dir.iterdir())


async def test_credentials_from_docker_config(
    registry: Registry, other: Registry, oci: OciRegistry, tokens: TokenServer, tiny: TinyGGUF, tmp_path: Path
) -> None:
    tokens.users = {"alice": "secret", "bob": "hunter2"}
    docker_login(tmp_path, {f"http://{oci.host}": {"auth": basic("alice", "secret")}})
    name = f"{oci.host}/test/login:v1"
    assert (await publish(registry, tiny, name))[-1].status == "success"
    docker_login(tmp_path, {oci.host: {"username": "bob", "password": "hunter2"}})
    assert (await events(other.pull(name, insecure=True)))[-1].status == "success"
    assert {(r.user, r.status) for r in tokens.requests} == {("alice", 200), ("bob", 200)}
    assert "repository:test/login:pull,push" in [s for r in tokens.requests if r.user == "alice" for s in r.scopes]
    assert [r.scopes for r in tokens.requests if r.user == "bob"] == [("repository:test/login:pull",)]

    tokens.clear()
    await other.delete(name)
    docker_login(
        tmp_path, {oci.host: {"auth": basic("bob", "wrong")}, "127.0.0.1:1": {"auth": basic("bob", "hunter2")}}
    )
    with pytest.raises(CorralError) as err:
        await events(other.pull(name, insecure=True))
    assert err.value.message == "unauthorized: access denied"
    assert [(r.user, r.status) for r in tokens.requests] == [("bob", 401)]
    assert await other.list_models() == []


async def test_token_realm_on_another_host_is_refused(other: Registry, tmp_path: Path) -> None:
    elsewhere = TokenServer(tmp_path, bind="127.0.0.2")
    oci = start_oci_registry(tmp_path / "realm-elsewhere", elsewhere)
    try:
        with pytest.raises(CorralError) as err:
            await events(other.pull(f"{oci.host}/test/tiny:v1", insecure=True))
        assert err.value.message == f"unauthorized: token realm {elsewhere.realm!r} is not on the registry's host"
        assert elsewhere.requests == []  # never asked
        assert statuses(oci, "GET", "/v2/test/tiny/manifests/v1", 1) == [401]
        assert await other.list_models() == []
    finally:
        oci.stop()
        elsewhere.close()
