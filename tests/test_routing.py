from __future__ import annotations

import pytest

from ollama_asgi.routing import Kind, match_route, route_path


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/llm/api/chat", "/llm", "/api/chat"),
        ("/llm/api/chat/", "/llm", "/api/chat"),  # Litestar adds a trailing slash
        ("/llm", "/llm", "/"),
        ("/llm/", "/llm", "/"),
        ("/llmx/api/chat", "/llm", "/llmx/api/chat"),  # never cut inside a segment
        ("/api/chat", "/llm", "/api/chat"),  # a host that already stripped the prefix
        ("/api/tags", "", "/api/tags"),
    ],
)
def test_route_path_strips_the_mount_prefix_at_a_segment_boundary(path: str, root: str, expected: str) -> None:
    assert route_path({"path": path, "root_path": root}) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/api/../api/delete",
        "//api/pull",
        "/API/PULL",
        "/api/pull.",
        "/api/blobs/",
        "/api/blobs/a/b",
        "/api/blobs/..",
        "/v1/models/../x",
        "/api",
        "/api/chat/extra",
    ],
)
def test_path_tricks_match_no_route(path: str) -> None:
    assert match_route(path) is None


def test_management_routes_are_marked_as_such() -> None:
    for path in ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/sha256:abc"):
        route = match_route(path)
        assert route is not None and route.kind is Kind.MANAGE, path


def test_stream_defaults_follow_ollama() -> None:
    assert match_route("/api/chat").stream_default is True  # type: ignore[union-attr]
    assert match_route("/v1/chat/completions").stream_default is False  # type: ignore[union-attr]
    assert match_route("/api/embed").stream_default is None  # type: ignore[union-attr]


def test_delete_is_a_delete_with_a_body() -> None:
    route = match_route("/api/delete")
    assert route is not None and route.methods == {"DELETE"} and route.json_body


def test_model_ids_with_namespaces_match_the_models_route() -> None:
    route = match_route("/v1/models/hf.co/org/model:Q4")
    assert route is not None and route.name == "openai_model"
