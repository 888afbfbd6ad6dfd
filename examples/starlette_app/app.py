"""The host app: its own login and pages, and the gateway mounted at ``/llm`` behind them."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from ollama_asgi import ApiKey, OllamaGateway, Settings
from ollama_asgi.contrib.starlette import CSRFMiddleware

from .accounts import check_credentials
from .auth import SessionBackend, User
from .pages import home_page, login_page
from .sessions import COOKIE_NAME, SessionSigner

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "DEMO_API_KEY", "GATEWAY_PREFIX", "create_app", "demo_settings"]

GATEWAY_PREFIX = "/llm"
DEMO_API_KEY = "demo-api-key-123"
# Pages copy this cookie into this header on every POST to the gateway (double-submit CSRF check).
CSRF_COOKIE = "csrftoken"
CSRF_HEADER = "X-CSRFToken"


def demo_settings(upstream: str) -> Settings:
    """The gateway's configuration: one Ollama, host users, and one API key for machine clients."""
    # "id=secret"; "id=sha256:<hex>" keeps the secret itself out of the configuration.
    return Settings(upstreams=(upstream,), api_keys=(ApiKey.parse(f"demo-key={DEMO_API_KEY}"),))


def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path") or "/"


def _set_csrf_cookie(request: Request, response: Response) -> None:
    # Readable by the page's script (not HttpOnly): it is a token to echo, not a credential.
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(24),
        path=_cookie_path(request),
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("application/json")


async def _read_credentials(request: Request) -> tuple[str, str] | None:
    """Username and password from a JSON body or the HTML form; None when the body is malformed."""
    if _is_json(request):
        try:
            data = await request.json()
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        username, password = data.get("username", ""), data.get("password", "")
    else:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        username, password = form.get("username", [""])[0], form.get("password", [""])[0]
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    return username, password


async def login(request: Request) -> Response:
    """GET: the login form. POST: a form (redirects home) or JSON (answers JSON); sets the cookie."""
    if request.method == "GET":
        return HTMLResponse(login_page())
    wants_json = _is_json(request)
    credentials = await _read_credentials(request)
    if credentials is None:
        return JSONResponse({"error": "expected username and password strings"}, status_code=400)
    username, password = credentials
    # PBKDF2 takes tens of milliseconds on purpose; keep it off the event loop.
    account = await run_in_threadpool(check_credentials, username, password) if username else None
    if account is None:
        if wants_json:
            return JSONResponse({"error": "invalid username or password"}, status_code=401)
        return HTMLResponse(login_page("Invalid username or password.", username), status_code=401)
    response: Response
    if wants_json:
        response = JSONResponse(
            {"username": account.username, "display_name": account.display_name, "is_staff": account.is_staff}
        )
    else:
        response = RedirectResponse(request.url_for("home"), status_code=303)
    signer: SessionSigner = request.app.state.signer
    response.set_cookie(
        COOKIE_NAME,
        signer.dumps(account.username),
        max_age=signer.max_age,
        path=_cookie_path(request),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    _set_csrf_cookie(request, response)
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(request.url_for("login"), status_code=303)
    response.delete_cookie(COOKIE_NAME, path=_cookie_path(request))
    response.delete_cookie(CSRF_COOKIE, path=_cookie_path(request))
    return response


async def home(request: Request) -> Response:
    user = request.user
    if not isinstance(user, User):
        return RedirectResponse(request.url_for("login"), status_code=303)
    api_prefix = request.scope.get("root_path", "") + GATEWAY_PREFIX
    page = home_page(
        user.display_name,
        is_staff=user.is_staff,
        api_prefix=api_prefix,
        csrf_cookie=CSRF_COOKIE,
        csrf_header=CSRF_HEADER,
    )
    response = HTMLResponse(page)
    if CSRF_COOKIE not in request.cookies:
        _set_csrf_cookie(request, response)
    return response


def create_app(settings: Settings, *, secret_key: bytes | None = None) -> Starlette:
    """Build the host app with the gateway at ``/llm``.

    Args:
        settings: The gateway's settings, e.g. ``demo_settings("http://127.0.0.1:11434")``.
        secret_key: Signs session cookies; a random key (sessions end at restart) when omitted.
    """
    gateway = OllamaGateway(settings)
    signer = SessionSigner(secret_key or secrets.token_bytes(32))
    app = Starlette(
        routes=[
            Route("/", home, name="home"),
            Route("/login", login, methods=["GET", "POST"], name="login"),
            Route("/logout", logout, methods=["POST"], name="logout"),
            # Cookie-authenticated POSTs must carry the CSRF token; API-key clients need none.
            Mount(GATEWAY_PREFIX, app=CSRFMiddleware(gateway, cookie_name=CSRF_COOKIE, header_name=CSRF_HEADER)),
        ],
        middleware=[
            # The gateway marks its streams Content-Encoding: identity, so GZip passes them through.
            Middleware(GZipMiddleware, minimum_size=500),
            Middleware(AuthenticationMiddleware, backend=SessionBackend(signer)),
        ],
        # Starlette does not send lifespan events to mounted apps; this lets the gateway close its
        # upstream connections when the host shuts down.
        lifespan=gateway.lifespan,
    )
    app.state.signer = signer
    app.state.gateway = gateway
    return app
