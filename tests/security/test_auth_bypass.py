"""Attempts to reach what only administrators may use, by anyone who is not one.

The protected set: model management (pull, push, create, copy, delete, blobs), the gateway's
backend control (``/_gateway/backends``), ``/_gateway/status`` and ``/_gateway/metrics``, and the
routes that act as the server's ollama.com account (allowed to administrators here). The
callers: nobody, an ordinary API key, a logged-in host user who is not staff, an API key in the
query string. The tricks: path spellings (dot segments, doubled and encoded slashes, case,
trailing dots and slashes, NULs, backslashes, escapes out of the mount), methods (HEAD, OPTIONS,
lower case, override headers), header games (repeated Authorization, bare CR/LF, folding), CORS
preflights. Every answer must be a refusal, and Ollama must never see a management request.

Requests are written on raw sockets so no client tidies the path first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Callable, Iterator

import pytest

import ollama_asgi.auth
from ollama_asgi import Settings
from ollama_asgi.auth import DefaultAuthorizer
from ollama_asgi.testing import EmulatorServer
from tests.conftest import ADMIN, ADMIN_KEY, API_KEY, AUTH, login
from tests.security.wire import Reply, request, send_raw
from tests.support.server import ServerThread

MANAGEMENT_PATHS = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs")
# Acting as the server's ollama.com account: administrators only, even with cloud_account_routes on.
ACCOUNT_PATHS = (
    "/api/me",
    "/api/signout",
    "/api/user/keys",
    "/api/experimental/web_search",
    "/api/experimental/web_fetch",
)
DIGEST = "sha256:" + "ab" * 32
BODIES = {
    "/api/pull": b'{"model":"llama3.2"}',
    "/api/push": b'{"model":"llama3.2"}',
    "/api/create": b'{"model":"pwned","from":"llama3.2"}',
    "/api/copy": b'{"source":"llama3.2","destination":"pwned"}',
    "/api/delete": b'{"model":"llama3.2"}',
    f"/api/blobs/{DIGEST}": b"blob",
}
TARGETS = [("POST", p) for p in ("/api/pull", "/api/push", "/api/create", "/api/copy", f"/api/blobs/{DIGEST}")]
TARGETS += [("DELETE", "/api/delete"), ("HEAD", f"/api/blobs/{DIGEST}")]
TARGETS += [("GET", "/_gateway/backends"), ("POST", "/_gateway/backends/backend-0/drain")]
TARGETS += [("DELETE", "/_gateway/backends/backend-0"), ("POST", "/_gateway/backends")]
TARGETS += [("GET", "/_gateway/status"), ("GET", "/_gateway/metrics"), ("HEAD", "/_gateway/metrics")]
TARGETS += [("POST", "/api/me"), ("POST", "/api/signout"), ("DELETE", "/api/user/keys/c3NoLWVkMjU1MTk")]
TARGETS += [("POST", "/api/experimental/web_search"), ("POST", "/api/experimental/web_fetch")]
REFUSALS = {400, 401, 403, 404, 405, 411, 413, 414, 431}


def spellings(path: str) -> list[str]:
    """Ways to write ``/llm`` + ``path`` that a lax router might take for it, or for something else."""
    first, _, rest = path[1:].partition("/")  # "api", "pull"
    upper = path.upper()
    return [
        f"/llm{path}",
        f"/llm/..{path}",
        f"/llm/../llm{path}",
        f"/llm/%2e%2e/llm{path}",
        f"/llm/%2E%2E{path}",
        f"/llm/{first}/../{first}/{rest}",
        f"/llm/{first}/%2e%2e/{first}/{rest}",
        f"/llm/./{first}/./{rest}",
        f"//llm{path}",
        f"/llm/{path}",
        f"/llm/{first}//{rest}",
        f"/llm/{first}%2F{rest}",
        f"/llm/{first}%2f{rest}",
        f"/llm%2F{first}%2F{rest}",
        f"/llm{upper}",
        f"/LLM{path}",
        f"/Llm/{first.capitalize()}/{rest.capitalize()}",
        f"/llm{path}.",
        f"/llm{path}./",
        f"/llm{path}/",
        f"/llm{path}//",
        f"/llm{path}%20",
        f"/llm{path}%00",
        f"/llm{path}%2F",
        f"/llm{path};jsessionid=1",
        f"/llm{path}?x=1",
        f"/llm{path}#frag",
        f"/llm/{first}\\{rest}",
        f"/llm/%61{first[1:]}/{rest}",
        f"/llm/v1/..{path}",
        f"/llm/v1/models/..%2F..{path}",
        f"/llm/v1/models/%2e%2e%2f%2e%2e{path.replace('/', '%2f')}",
        f"/llm/_gateway/..{path}",
        f"/llm/api/blobs/..%2F{rest}",
        f"/other/..{'/llm' + path}",
        f"/llm/%252e%252e{path}",
        f"/llm/\u2025{path}",
        f"http://127.0.0.1/llm{path}",
        f"/llm{path}/..%2f..%2f",
    ]


@pytest.fixture
def server(host_factory: Callable[..., ServerThread]) -> ServerThread:
    return host_factory(cloud_account_routes=True)


@pytest.fixture
def alice(server: ServerThread) -> str:
    return "session=" + login(server.url, "alice")["session"]


@pytest.fixture
def untouched(emulator: EmulatorServer) -> Iterator[None]:
    """After the test, Ollama must have seen no management request and no smuggled header."""
    yield
    protected = MANAGEMENT_PATHS + ACCOUNT_PATHS
    seen = [(r.method, r.path) for r in emulator.emulator.requests if r.path.startswith(protected)]
    assert seen == [], f"management requests reached Ollama: {seen[:5]}"
    smuggled = {"authorization", "cookie", "x-http-method-override", "x-original-url", "x-rewrite-url", "origin"}
    for record in emulator.emulator.requests:
        assert not smuggled & set(record.headers), record.headers


def _callers(alice: str) -> dict[str, list[tuple[str, str]]]:
    return {
        "nobody": [],
        "api-key": list(AUTH.items()),
        "host-user": [("Cookie", alice)],
        "wrong-scheme": [("Authorization", f"Basic {API_KEY}")],
        "bare-token": [("Authorization", API_KEY)],
    }


def _body_for(path: str) -> bytes:
    return next((body for prefix, body in BODIES.items() if path.startswith(prefix)), b"{}")


def _assert_refused(reply: Reply, what: str) -> None:
    assert reply.status in REFUSALS, f"{what}: {reply.status} {reply.body[:120]!r}"


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(("method", "path"), TARGETS, ids=[f"{m} {p}" for m, p in TARGETS])
def test_every_spelling_of_a_protected_path_is_refused_to_every_non_admin(
    server: ServerThread, alice: str, method: str, path: str
) -> None:
    for who, headers in _callers(alice).items():
        for target in spellings(path):
            reply = request(server.port, method, target, headers, _body_for(path))
            _assert_refused(reply, f"{who} {method} {target}")


@pytest.mark.usefixtures("untouched")
def test_an_api_key_in_the_query_string_authenticates_nobody(server: ServerThread) -> None:
    for name in ("api_key", "key", "token", "access_token", "apikey", "authorization", "bearer"):
        for secret in (API_KEY, ADMIN_KEY, f"Bearer%20{ADMIN_KEY}"):
            assert request(server.port, "GET", f"/llm/api/tags?{name}={secret}").status == 401
            reply = request(server.port, "POST", f"/llm/api/pull?{name}={secret}", body=BODIES["/api/pull"])
            assert reply.status == 401, (name, reply.status)
            assert request(server.port, "GET", f"/llm/_gateway/metrics?{name}={secret}").status == 401


@pytest.mark.usefixtures("untouched")
def test_methods_and_override_headers_do_not_open_management_routes(server: ServerThread, alice: str) -> None:
    overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Original-URL", "/llm/api/delete"),
        ("X-Rewrite-URL", "/llm/api/delete"),
        ("X-Forwarded-Prefix", "/llm/api"),
        ("X-Forwarded-Path", "/llm/api/pull"),
    ]
    for who, headers in _callers(alice).items():
        for method in ("HEAD", "OPTIONS", "TRACE", "PUT", "PATCH", "GET", "post", "Post", "DELETE"):
            for path in ("/llm/api/pull", "/llm/api/delete", "/llm/api/copy", "/llm/_gateway/status"):
                _assert_refused(request(server.port, method, path, headers, BODIES["/api/pull"]), f"{who} {method}")
        for header in overrides:
            for method, path in (("POST", "/llm/api/delete"), ("GET", "/llm/api/delete"), ("POST", "/llm/api/pull")):
                reply = request(server.port, method, path, [*headers, header], BODIES["/api/delete"])
                _assert_refused(reply, f"{who} {method} {path} {header}")
    # An override header on an allowed route changes nothing and is not forwarded (``untouched``).
    reply = request(server.port, "GET", "/llm/api/tags", [*AUTH.items(), overrides[0], overrides[3]])
    assert reply.status == 200 and "models" in reply.json()  # type: ignore[operator]


@pytest.mark.usefixtures("untouched")
def test_repeated_authorization_headers_never_add_up_to_an_admin(server: ServerThread) -> None:
    user, forged = f"Bearer {API_KEY}", f"Bearer {ADMIN_KEY[:-1]}x"
    combos = [
        [user, forged],
        [forged, user],
        [user, user],
        [f"{user}, {forged}"],
        [f"Bearer {API_KEY} {ADMIN_KEY[:-1]}x"],
        [f"Bearer  {API_KEY}"],
        [f"bearer {API_KEY}"],
    ]
    for values in combos:
        headers = [("Authorization", v) for v in values]
        for method, path in TARGETS:
            _assert_refused(request(server.port, method, f"/llm{path}", headers, _body_for(path)), str(values))


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    "injected",
    [
        b"X-Request-Id: abc\rSet-Cookie: pwned=1",
        b"X-Request-Id: abc\nSet-Cookie: pwned=1",
        b"X-Request-Id: abc\r\n Set-Cookie: pwned=1",  # obsolete line folding
        b"X-Request-Id: abc\x00def",
        b"X-Request-Timeout: 5\rAuthorization: Bearer " + ADMIN_KEY.encode(),
        b"Authorization: Bearer " + API_KEY.encode() + b"\rX-Admin: 1",
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\n\tBearer " + ADMIN_KEY.encode(),
    ],
    ids=["bare-cr", "bare-lf", "obs-fold", "nul", "cr-in-timeout", "cr-after-key", "folded-authorization"],
)
def test_cr_lf_and_nul_in_header_values_never_reach_a_response_header_or_authenticate(
    server: ServerThread, injected: bytes
) -> None:
    for method, path in (("POST", "/llm/api/pull"), ("GET", "/llm/_gateway/metrics"), ("GET", "/llm/api/tags")):
        body = BODIES["/api/pull"] if method == "POST" else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
        reply = send_raw(server.port, head.encode() + injected, body)
        # The server rejects the request (400 or a closed connection) or treats it as unauthenticated.
        assert reply.status in {0, 400, 401}, (path, reply.status, reply.body[:100])
        assert all(name != "set-cookie" for name, _ in reply.headers)
        assert all("pwned" not in value and "\r" not in value for _, value in reply.headers)


@pytest.mark.usefixtures("untouched")
def test_cors_preflights_get_no_allowance_and_foreign_origins_get_no_cors_headers(
    server: ServerThread, alice: str
) -> None:
    preflight = [
        ("Origin", "https://evil.example"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "authorization, content-type"),
    ]
    paths = [f"/llm{p}" for _, p in TARGETS] + ["/llm/api/chat", "/llm/v1/chat/completions", "/llm/api/tags"]
    for path in paths:
        for headers in ([], list(AUTH.items()), [("Cookie", alice)]):
            reply = request(server.port, "OPTIONS", path, preflight + headers)
            assert reply.status in {404, 405}, (path, reply.status)
            assert not any(name.startswith("access-control-") for name, _ in reply.headers), reply.headers
    reply = request(server.port, "GET", "/llm/api/tags", [("Origin", "https://evil.example"), *AUTH.items()])
    assert reply.status == 200
    assert not any(name.startswith("access-control-") for name, _ in reply.headers), reply.headers


@pytest.mark.usefixtures("untouched")
def test_administrators_still_get_in_so_the_refusals_above_are_about_identity(server: ServerThread) -> None:
    assert request(server.port, "GET", "/llm/_gateway/status", list(ADMIN.items())).status == 200
    assert request(server.port, "GET", "/llm/_gateway/metrics", list(ADMIN.items())).status == 200
    assert request(server.port, "GET", "/llm/_gateway/backends", list(ADMIN.items())).status == 200
    root = "session=" + login(server.url, "root")["session"]
    assert request(server.port, "GET", "/llm/_gateway/status", [("Cookie", root)]).status == 200


def test_management_by_an_admin_does_reach_ollama(server: ServerThread, emulator: EmulatorServer) -> None:
    """The ``untouched`` check can fail: an admin's copy is recorded by Ollama."""
    reply = request(server.port, "POST", "/llm/api/copy", list(ADMIN.items()), BODIES["/api/copy"])
    assert reply.status == 200
    assert [r.path for r in emulator.emulator.requests if r.path == "/api/copy"] == ["/api/copy"]


# -- keys at rest and their comparison -------------------------------------------------------------


def test_settings_hold_only_key_digests_and_never_print_a_secret() -> None:
    settings = Settings.from_mapping(dict(api_keys=(f"ci={API_KEY}",), admin_api_keys=(f"ops={ADMIN_KEY}",)))
    dumped = [repr(settings), str(settings), repr(dataclasses.asdict(settings)), repr(settings.api_keys)]
    for text in dumped:
        assert API_KEY not in text and ADMIN_KEY not in text
    assert settings.api_keys[0].sha256 == hashlib.sha256(API_KEY.encode()).hexdigest()
    assert settings.admin_api_keys[0].sha256 == hashlib.sha256(ADMIN_KEY.encode()).hexdigest()


def test_status_and_metrics_never_show_a_key(server: ServerThread) -> None:
    for path in ("/llm/_gateway/status", "/llm/_gateway/metrics", "/llm/_gateway/backends", "/llm/_gateway/health"):
        body = request(server.port, "GET", path, [*ADMIN.items(), ("Accept", "application/json")]).body
        assert API_KEY.encode() not in body and ADMIN_KEY.encode() not in body
        assert hashlib.sha256(ADMIN_KEY.encode()).hexdigest().encode() not in body


async def test_keys_are_compared_by_digest_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []
    compare = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(ollama_asgi.auth.hmac, "compare_digest", spy)
    authorize = DefaultAuthorizer(
        Settings.from_mapping(dict(api_keys=(f"ci={API_KEY}",), admin_api_keys=(f"ops={ADMIN_KEY}",)))
    )

    def scope(token: str) -> dict[str, object]:
        return {"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]}

    assert (await authorize(scope(ADMIN_KEY))).is_admin  # type: ignore[union-attr]
    assert await authorize(scope(ADMIN_KEY[:-1] + "x")) is None  # a near miss costs the same lookup
    assert await authorize(scope(ADMIN_KEY + "x")) is None
    assert compared, "the key comparison must go through hmac.compare_digest"
    for a, b in compared:  # only SHA-256 digests are compared, never the secrets themselves
        assert len(a) == len(b) == 64 and ADMIN_KEY not in (a, b)
