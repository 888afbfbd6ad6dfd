"""``OllamaGatewayPlugin``: one line in ``Litestar(plugins=[...])`` mounts the gateway.

The mount is a route like any other, so the app's middleware (authentication, sessions,
compression, allowed hosts) and the plugin's guards run before the gateway; the user that the
app's authentication middleware put in ``scope["user"]`` becomes the principal. Litestar sends no
lifespan events to mounted apps, so the plugin adds a lifespan hook that closes the gateway's
upstream connections at shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin
from litestar.types import Guard

from ollama_asgi.contrib.litestar.handler import mount_handler
from ollama_asgi.contrib.principals import UserAuthorizer, UserToPrincipal
from ollama_asgi.errors import ConfigError
from ollama_asgi.gateway import OllamaGateway
from ollama_asgi.settings import Settings

__all__ = ["OllamaGatewayPlugin"]


def _mount_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "":
        raise ConfigError("path", f"must be an absolute path below the root, such as '/llm', got {path!r}")
    return path.rstrip("/")


class OllamaGatewayPlugin(InitPlugin):
    """Mount ``OllamaGateway`` at ``path`` in a Litestar app.

    Args:
        settings: The gateway's settings; ``Settings.from_env()`` (``OLLAMA_ASGI_*``) when None.
            Build them from the app's own configuration with ``Settings(...)``,
            ``Settings.from_mapping(...)`` or ``Settings.from_module("myapp.settings")``.
        path: Where the gateway answers; Ollama clients use ``http://host/llm``.
        user_to_principal: Maps ``scope["user"]`` (whatever the app's authentication middleware
            returned) to a ``Principal``, or None for 401; sync or async. The default reads the
            usual attribute names (``username``, ``is_staff``, ``roles``...).
        guards: Litestar guards for the mount, run after authentication.
        exclude_from_auth: Set when the app's authentication middleware rejects requests without
            a session: the mount then skips it and only API keys authenticate.
        opt: Extra ``opt`` for the mount's route handler.

    Raises:
        ConfigError: A setting (``OLLAMA_ASGI_*``) or ``path`` is invalid; the message names it.
    """

    __slots__ = ("exclude_from_auth", "gateway", "guards", "opt", "path", "settings")

    def __init__(
        self,
        settings: Settings | None = None,
        path: str = "/llm",
        *,
        user_to_principal: UserToPrincipal | None = None,
        guards: Sequence[Guard] | None = None,
        exclude_from_auth: bool = False,
        opt: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = _mount_path(path)
        self.settings = settings if settings is not None else Settings.from_env()
        self.gateway = OllamaGateway(self.settings, authorize=UserAuthorizer(self.settings, user_to_principal))
        self.guards = guards
        self.exclude_from_auth = exclude_from_auth
        self.opt = dict(opt or {})

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        opt = dict(self.opt)
        if self.exclude_from_auth:
            opt["exclude_from_auth"] = True
        handler = mount_handler(
            self.gateway, self.path, csrf_config=app_config.csrf_config, guards=self.guards, opt=opt
        )
        app_config.route_handlers.append(handler)
        app_config.lifespan.append(self.gateway.lifespan)
        return app_config
