"""Starlette and FastAPI: a plain ``Mount`` is all the wiring; these helpers add the policy.

Starlette's ``Mount`` keeps the full ``path``, extends ``root_path`` and passes on what the app's
``AuthenticationMiddleware`` put in ``scope["user"]``, so the gateway needs no adapter. What a host
usually wants on top is its own user model mapped to a principal (roles, allowed models) and, as
Starlette has no CSRF protection, a token check on cookie-authenticated requests::

    from ollama_asgi import OllamaGateway, Principal, Settings
    from ollama_asgi.contrib.starlette import CSRFMiddleware, UserAuthorizer

    def to_principal(user: MyUser) -> Principal | None:
        return Principal(id=user.email, is_admin="ops" in user.roles, models=user.allowed_models)

    settings = Settings.from_env()
    gateway = OllamaGateway(settings, authorize=UserAuthorizer(settings, to_principal))
    app = Starlette(
        routes=[Mount("/llm", app=CSRFMiddleware(gateway)), ...],
        middleware=[Middleware(AuthenticationMiddleware, backend=MyAuth())],
        lifespan=gateway.lifespan,      # Starlette sends no lifespan events to mounted apps
    )
    # FastAPI: app = FastAPI(lifespan=gateway.lifespan); app.mount("/llm", CSRFMiddleware(gateway))

Nothing here imports Starlette.
"""

from __future__ import annotations

from ollama_asgi.contrib.csrf import CSRFMiddleware
from ollama_asgi.contrib.principals import UserAuthorizer, UserToPrincipal, default_user_to_principal

__all__ = ["CSRFMiddleware", "UserAuthorizer", "UserToPrincipal", "default_user_to_principal"]
