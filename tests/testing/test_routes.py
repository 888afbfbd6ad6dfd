"""The route table and gin's answers when nothing matches: 404, 405, trailing-slash redirect."""

from __future__ import annotations

import httpx


def test_unknown_path_is_a_plain_text_404(client: httpx.Client) -> None:
    response = client.get("/api/nothing")
    assert (response.status_code, response.text) == (404, "404 page not found")
    assert response.headers["content-type"] == "text/plain"


def test_wrong_method_is_a_plain_text_405(client: httpx.Client) -> None:
    response = client.get("/api/chat")
    assert (response.status_code, response.text) == (405, "405 method not allowed")
    assert response.headers["allow"] == "POST"


def test_delete_route_refuses_post(client: httpx.Client) -> None:
    assert client.post("/api/delete", json={"model": "x"}).status_code == 405


def test_trailing_slash_redirects_like_gin(client: httpx.Client) -> None:
    response = client.get("/api/tags/")
    assert (response.status_code, response.headers["location"]) == (301, "/api/tags")
