"""A real Docker token server on loopback, for registries that use `auth: token`.

`TokenServer` answers the Docker token protocol
(`GET <realm>?service=<service>&scope=repository:<name>:pull,push`) with
`{"token", "access_token", "expires_in", "issued_at"}`. The token is a JWT that
distribution verifies: RS256, signed by a fresh RSA key whose self-signed
certificate is the registry's `rootcertbundle` and rides in the header's `x5c`;
`iss` is the issuer, `aud` the service, `access` the granted actions.

Every request is recorded (service, scopes, the basic-auth user, the status), so
tests can check what a client asked for. With `users` set, a request without
matching HTTP basic credentials is answered 401; `grant` can narrow what is
handed out (e.g. pull only).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

# (user or None, resource type, resource name, requested actions) -> granted actions
Grant = Callable[[str | None, str, str, list[str]], list[str]]


def grant_all(_user: str | None, _type: str, _name: str, actions: list[str]) -> list[str]:
    return actions


def canonical_scope(scope: str) -> str:
    """`repository:<name>:<actions>` with the actions sorted: the registry's challenge lists them in
    no fixed order (push,pull or pull,push)."""
    head, sep, actions = scope.rpartition(":")
    return f"{head}{sep}{','.join(sorted(actions.split(',')))}" if sep else scope


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class TokenRequest:
    service: str
    scopes: tuple[str, ...]
    user: str | None  # the basic-auth user name, if any was sent
    status: int


class TokenServer:
    """Issues registry tokens on http://<bind>:<port>/token, in its own thread."""

    def __init__(self, tmp: Path, *, service: str = "corral-test-registry", issuer: str = "corral-test-issuer",
                 users: dict[str, str] | None = None, expires_in: int = 300,
                 bind: str = "127.0.0.1") -> None:  # fmt: skip
        self.service, self.issuer, self.expires_in = service, issuer, expires_in
        self.users = users  # None: anonymous requests get tokens
        self.grant: Grant = grant_all
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = tmp / "token-cert.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()

        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((bind, 0), Handler)
        self.bind, self.port = bind, int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"http://{self.bind}:{self.port}/token"

    def scopes(self) -> list[str]:
        """Every scope asked for, in order, over all requests (actions sorted: see canonical_scope)."""
        with self._lock:
            return [s for r in self.requests for s in r.scopes]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def token(self, user: str | None, scopes: list[str]) -> str:
        """A signed JWT granting `scopes` (as `self.grant` allows) to `user`."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = self.grant(user, kind, name, [a for a in actions.split(",") if a])
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _user(self, authorization: str) -> tuple[str | None, bool]:
        """(user, credentials valid) for an Authorization header."""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None, self.users is None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None, False
        if self.users is None:
            return user, True
        return user, self.users.get(user) == password

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        query = parse_qs(url.query)
        service = (query.get("service") or [""])[0]
        scopes = query.get("scope", [])
        user, ok = self._user(h.headers.get("Authorization", ""))
        body: dict[str, object]
        extra: dict[str, str]
        if url.path != "/token":
            status, body, extra = 404, {"errors": [{"code": "NOT_FOUND"}]}, {}
        elif not ok:
            status, body = 401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            extra = {"WWW-Authenticate": 'Basic realm="corral-test"'}
        elif service != self.service:
            status, body, extra = 400, {"errors": [{"code": "DENIED", "message": "unknown service"}]}, {}
        else:
            token = self.token(user, scopes)
            issued = dt.datetime.now(dt.UTC).isoformat()
            status, extra = 200, {}
            body = {"token": token, "access_token": token, "expires_in": self.expires_in, "issued_at": issued}
        with self._lock:
            self.requests.append(TokenRequest(service, tuple(canonical_scope(sc) for sc in scopes), user, status))
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
