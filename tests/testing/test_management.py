"""Model management routes: /, version, tags, show, copy, delete, pull, push, create, blobs."""

from __future__ import annotations

import hashlib
import re

import httpx
import ollama

from ollama_asgi.testing import EmulatedModel, EmulatorServer
from ollama_asgi.testing.wire import EMULATED_VERSION

from .conftest import Serve, ndjson


def test_root_says_ollama_is_running(client: httpx.Client) -> None:
    response = client.get("/")
    assert (response.status_code, response.text) == (200, "Ollama is running")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_head_root_has_no_body(client: httpx.Client) -> None:
    response = client.head("/")
    assert (response.status_code, response.content, response.headers["content-length"]) == (200, b"", "17")


def test_version(client: httpx.Client) -> None:
    assert client.get("/api/version").json() == {"version": EMULATED_VERSION}


def test_version_is_configurable(serve: Serve) -> None:
    assert httpx.get(f"{serve(version='0.30.1').url}/api/version").json() == {"version": "0.30.1"}


def test_tags_lists_the_store(client: httpx.Client) -> None:
    models = client.get("/api/tags").json()["models"]
    names = [m["name"] for m in models]
    assert "llama3.2:latest" in names and "all-minilm:latest" in names
    entry = models[names.index("llama3.2:latest")]
    assert list(entry) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert entry["size"] == 2_019_393_189
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert entry["details"]["family"] == "llama"
    assert entry["details"]["parameter_size"] == "3.2B"


def test_empty_store_lists_an_empty_array(serve: Serve) -> None:
    assert httpx.get(f"{serve(models=()).url}/api/tags").json() == {"models": []}


def test_show_describes_a_model(client: httpx.Client) -> None:
    body = client.post("/api/show", json={"model": "llama3.2"}).json()
    assert body["capabilities"] == ["completion", "tools"]
    assert body["model_info"]["llama.context_length"] == 131072
    assert body["model_info"]["llama.embedding_length"] == 3072
    assert body["model_info"]["general.architecture"] == "llama"
    assert body["details"]["quantization_level"] == "Q4_K_M"
    assert "FROM " in body["modelfile"]
    assert "stop" in body["parameters"]


def test_show_accepts_name_too(client: httpx.Client) -> None:
    assert client.post("/api/show", json={"name": "all-minilm"}).json()["capabilities"] == ["embedding"]


def test_show_unknown_model_is_404(client: httpx.Client) -> None:
    response = client.post("/api/show", json={"model": "x"})
    assert (response.status_code, response.json()) == (404, {"error": "model 'x' not found"})


def test_show_without_a_model_is_400(client: httpx.Client) -> None:
    response = client.post("/api/show", json={})
    assert (response.status_code, response.json()) == (400, {"error": "model is required"})


def test_copy_adds_a_name_with_an_empty_200(client: httpx.Client) -> None:
    response = client.post("/api/copy", json={"source": "llama3.2", "destination": "backup:v1"})
    assert (response.status_code, response.content) == (200, b"")
    assert "backup:v1" in [m["name"] for m in client.get("/api/tags").json()["models"]]


def test_copy_of_a_missing_model_is_404(client: httpx.Client) -> None:
    response = client.post("/api/copy", json={"source": "ghost", "destination": "x"})
    assert (response.status_code, response.json()) == (404, {"error": 'model "ghost" not found'})


def test_delete_takes_a_json_body(client: httpx.Client) -> None:
    response = client.request("DELETE", "/api/delete", json={"model": "qwen2.5:0.5b"})
    assert (response.status_code, response.content) == (200, b"")
    again = client.request("DELETE", "/api/delete", json={"model": "qwen2.5:0.5b"})
    assert (again.status_code, again.json()) == (404, {"error": "model 'qwen2.5:0.5b' not found"})


def test_pull_streams_progress_and_adds_the_model(serve: Serve) -> None:
    server = serve(models=())
    response = httpx.post(f"{server.url}/api/pull", json={"model": "all-minilm"})
    statuses = [line["status"] for line in ndjson(response)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = next(line for line in ndjson(response) if "completed" in line)
    assert layer["digest"].startswith("sha256:") and layer["total"] == 45_960_996
    assert [m["name"] for m in httpx.get(f"{server.url}/api/tags").json()["models"]] == ["all-minilm:latest"]


def test_pull_of_an_unknown_model_fails_after_the_first_line(client: httpx.Client) -> None:
    response = client.post("/api/pull", json={"model": "nonexistent"})
    assert response.status_code == 200
    assert ndjson(response) == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]


def test_pull_without_streaming_returns_the_final_status(client: httpx.Client) -> None:
    response = client.post("/api/pull", json={"model": "qwen2.5:0.5b", "stream": False})
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "success"}


def test_pull_without_streaming_reports_errors_with_a_status(client: httpx.Client) -> None:
    response = client.post("/api/pull", json={"model": "nonexistent", "stream": False})
    assert (response.status_code, response.json()) == (500, {"error": "pull model manifest: file does not exist"})


def test_pull_from_a_custom_registry(serve: Serve) -> None:
    server = serve(models=(), registry=[EmulatedModel(name="tiny", size=10)])
    assert httpx.post(f"{server.url}/api/pull", json={"model": "tiny", "stream": False}).json()["status"] == "success"
    assert httpx.post(f"{server.url}/api/pull", json={"model": "llama3.2", "stream": False}).status_code == 500


def test_official_client_pull(serve: Serve) -> None:
    server = serve(models=())
    assert ollama.Client(host=server.url).pull("all-minilm").status == "success"


def test_push_streams_until_success(client: httpx.Client) -> None:
    statuses = [line.get("status") for line in ndjson(client.post("/api/push", json={"model": "llama3.2"}))]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]


def test_push_of_a_missing_model_errors_in_stream(client: httpx.Client) -> None:
    lines = ndjson(client.post("/api/push", json={"model": "ghost"}))
    assert "error" in lines[-1]


def test_create_from_an_existing_model(client: httpx.Client) -> None:
    response = client.post(
        "/api/create", json={"model": "mario", "from": "llama3.2", "system": "You are Mario.", "stream": False}
    )
    assert response.json() == {"status": "success"}
    shown = client.post("/api/show", json={"model": "mario"}).json()
    assert shown["system"] == "You are Mario."
    assert shown["capabilities"] == ["completion", "tools"]


def test_create_needs_from_or_files(client: httpx.Client) -> None:
    response = client.post("/api/create", json={"model": "x"})
    assert (response.status_code, response.json()) == (400, {"error": "neither 'from' or 'files' was specified"})


def test_create_parameters_become_options(server: EmulatorServer, client: httpx.Client) -> None:
    client.post("/api/create", json={"model": "big-ctx", "from": "llama3.2", "parameters": {"num_ctx": 8192}})
    client.post("/api/generate", json={"model": "big-ctx"})
    assert server.emulator.loaded_models()["big-ctx:latest"].num_ctx == 8192


def test_blob_upload_then_head(client: httpx.Client) -> None:
    data = b"gguf bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.head(f"/api/blobs/{digest}").status_code == 404
    assert client.post(f"/api/blobs/{digest}", content=data).status_code == 201
    assert client.head(f"/api/blobs/{digest}").status_code == 200
    created = client.post("/api/create", json={"model": "from-file", "files": {"model.gguf": digest}})
    assert ndjson(created)[-1] == {"status": "success"}


def test_blob_digest_mismatch_is_400(client: httpx.Client) -> None:
    digest = "sha256:" + "0" * 64
    response = client.post(f"/api/blobs/{digest}", content=b"other")
    assert response.status_code == 400
    assert response.json()["error"].startswith(f'digest mismatch, expected "{digest}", got "sha256:')


def test_blob_with_a_bad_digest_is_400(client: httpx.Client) -> None:
    response = client.post("/api/blobs/md5:abc", content=b"x")
    assert (response.status_code, response.json()) == (400, {"error": "invalid digest format"})
