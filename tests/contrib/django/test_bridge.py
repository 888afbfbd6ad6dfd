"""What the two Django ways in do beyond the shared behaviours: bodies, paths, lifespan, WSGI."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from django.test import RequestFactory, override_settings

from ollama_asgi.contrib.django.views import _user, gateway_view
from ollama_asgi.testing import EmulatorServer
from tests.contrib.django.project.asgi import application
from tests.hosts.base import API_KEY, Host
from tests.support.server import ServerThread

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1024)
def test_bodies_larger_than_django_upload_limit_reach_ollama_whole(django_host: Host, emulator: EmulatorServer) -> None:
    content = "word " * 40_000  # 200 kB, far above DATA_UPLOAD_MAX_MEMORY_SIZE (1 kB here)
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": content}], "stream": False}
    response = httpx.post(django_host.llm_url + "/api/chat", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    chat = [r for r in emulator.emulator.requests if r.path == "/api/chat"][-1]
    assert chat.json["messages"][0]["content"] == content


def test_non_streamed_answers_keep_their_length_and_type(django_host: Host) -> None:
    response = httpx.get(django_host.llm_url + "/api/tags", headers={**AUTH, "Accept-Encoding": "identity"})
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["content-length"]) == len(response.content)
    assert "llama3.2:latest" in {m["name"] for m in response.json()["models"]}


def test_streams_are_ndjson_and_not_compressed_by_django(django_host: Host) -> None:
    body = {"model": "llama3.2", "prompt": "a b c"}
    headers = {**AUTH, "Accept-Encoding": "gzip"}
    with httpx.stream("POST", django_host.llm_url + "/api/generate", json=body, headers=headers) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers.get("content-encoding", "identity") == "identity"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True


def test_errors_keep_the_openai_shape_under_v1(django_host: Host) -> None:
    response = httpx.get(django_host.llm_url + "/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_the_mount_leaves_every_other_path_to_django_and_answers_lifespan() -> None:
    with ServerThread(application, lifespan="on") as server:  # Django alone would fail lifespan
        assert httpx.get(server.url + "/whoami/").json() == {"user": None}
        assert httpx.get(server.url + "/llm-docs/").status_code == 404
        assert httpx.get(server.url + "/llm/api/version", headers=AUTH).json()["version"]


def test_the_view_refuses_to_run_under_wsgi() -> None:
    request = RequestFactory().get("/llm/api/tags")
    response = asyncio.run(gateway_view(request, path="api/tags"))
    assert response.status_code == 500
    assert "ASGI server" in json.loads(response.content)["error"]


@pytest.mark.parametrize("path", ["", "api/version"])
def test_the_urlconf_can_be_reversed(path: str) -> None:
    from django.urls import reverse

    assert reverse("ollama_asgi:gateway", kwargs={"path": path}) == "/llm/" + path


def test_a_user_set_by_the_projects_own_middleware_is_the_one_passed_on() -> None:
    from django.contrib.auth.models import AnonymousUser, User

    request = RequestFactory().get("/llm/api/tags")
    token_user = User(username="token-user")

    async def session_user() -> AnonymousUser:
        return AnonymousUser()

    request.auser = session_user  # what AuthenticationMiddleware leaves: the session's user
    request.user = token_user  # what a token middleware after it sets
    assert asyncio.run(_user(request)) is token_user


def test_without_an_explicit_user_the_session_user_is_passed_on() -> None:
    from django.contrib.auth.models import AnonymousUser
    from django.utils.functional import SimpleLazyObject

    request = RequestFactory().get("/llm/api/tags")
    anonymous = AnonymousUser()

    async def session_user() -> AnonymousUser:
        return anonymous

    request.auser = session_user
    request.user = SimpleLazyObject(lambda: anonymous)  # AuthenticationMiddleware's lazy user
    assert asyncio.run(_user(request)) is anonymous
