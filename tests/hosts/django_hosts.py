"""Django, both ways in: the URLconf bridge (``include(...urls)``) and the ``asgi.py`` ``mount()``.

Users sign in through Django's own ``LoginView`` with a real session in the test database; the
CSRF token is the rotated ``csrftoken`` cookie, as a page's JavaScript would send it.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.hosts.base import Host, Session, cookie_value
from tests.hosts.shared import PASSWORD, setup_django
from tests.support.server import ServerThread


def _signer(base_url: str):  # type: ignore[no-untyped-def]
    def sign_in(username: str) -> Session:
        with httpx.Client(base_url=base_url) as client:
            client.get("/accounts/login/").raise_for_status()
            form = {
                "username": username,
                "password": PASSWORD.format(username),
                "csrfmiddlewaretoken": cookie_value(client.cookies, "csrftoken"),
            }
            response = client.post("/accounts/login/", data=form)
            if response.status_code != 302:
                raise AssertionError(f"login as {username} failed: {response.status_code}")
            return Session(httpx.Cookies(client.cookies), cookie_value(client.cookies, "csrftoken"))

    return sign_in


def stop(server: ServerThread) -> None:
    """Stop ``server``, first closing the gateway's upstream sessions on its loop.

    Django gets no lifespan events, so a project serving the URLconf bridge never closes them;
    here the two Django hosts share one gateway and each must leave no session behind.
    """
    from ollama_asgi.contrib.django import conf

    gateway = conf.built_gateway()
    if gateway is not None and server.loop is not None:
        asyncio.run_coroutine_threadsafe(gateway.aclose(), server.loop).result(5)
    server.stop()


def start_urlconf() -> tuple[Host, ServerThread]:
    setup_django()
    from tests.contrib.django.project.asgi import django_application

    server = ServerThread(django_application, lifespan="off").start()
    return Host("django-urlconf", server.url, _signer(server.url), stop=lambda: stop(server)), server


def start_mount() -> tuple[Host, ServerThread]:
    setup_django()
    from tests.contrib.django.project.asgi import application

    server = ServerThread(application).start()
    return Host("django-asgi", server.url, _signer(server.url), stop=lambda: stop(server)), server
