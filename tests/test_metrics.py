"""/_gateway/metrics counts exactly what happened, is for administrators, and feeds the examples."""

from __future__ import annotations

import json
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import prometheus_client
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ollama_asgi import ConfigError, OllamaGateway, Settings, __version__
from ollama_asgi.testing import EmulatorServer, Fault
from tests.conftest import ADMIN, API_KEY, AUTH
from tests.support.hosts import starlette_host
from tests.support.processes import GatewayProcess, free_port
from tests.support.redis_server import RedisServer
from tests.support.server import ServerThread

LIMITED = {"Authorization": "Bearer limited-key-1"}
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "grafana"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    response = httpx.get(url, headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape_when(url: str, check: Callable[[Samples], bool], headers: dict[str, str] | None = None) -> Samples:
    """Scrape until ``check`` holds: a request is counted just after its last byte went out."""
    samples = scrape(url, headers)
    deadline = time.monotonic() + 5
    while not check(samples) and time.monotonic() < deadline:
        time.sleep(0.01)
        samples = scrape(url, headers)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def _chat(stream: bool = True) -> dict[str, object]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}], "stream": stream}


def _generate(llm: str, body: dict[str, object]) -> None:
    assert httpx.post(llm + "/api/generate", json=body, headers=AUTH, timeout=30).status_code == 200


def _final_counts(response: httpx.Response) -> tuple[int, int]:
    final = json.loads(response.text.strip().splitlines()[-1])
    return final.get("prompt_eval_count", 0), final.get("eval_count", 0)


def test_a_scripted_workload_is_counted_exactly(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(
        api_keys=(f"ci={API_KEY}", {"id": "limited", "key": "limited-key-1", "requests_per_minute": 1}),
    )
    llm = server.url + "/llm"
    prompt = completion = 0
    sent: dict[str, int] = {"chat": 0, "embed": 0}
    with httpx.Client(base_url=llm, timeout=30) as client:
        chats = [client.post("/api/chat", json=_chat(), headers=AUTH) for _ in range(4)]
        chats.append(client.post("/api/chat", json=_chat(), headers=LIMITED))
        embeds = [
            client.post("/api/embed", json={"model": "nomic-embed-text", "input": f"text {i}"}, headers=AUTH)
            for i in range(2)
        ]
        bad = client.post("/api/chat", content=b"{not json", headers=AUTH)
        anonymous = client.post("/api/chat", json=_chat())
        limited = client.post("/api/chat", json=_chat(), headers=LIMITED)
    assert [r.status_code for r in chats + embeds] == [200] * 7
    assert (bad.status_code, anonymous.status_code, limited.status_code) == (400, 401, 429)
    for response in chats:
        p, c = _final_counts(response)
        prompt, completion = prompt + p, completion + c
        sent["chat"] += len(response.content)
    for response in embeds:
        prompt += response.json()["prompt_eval_count"]
        sent["embed"] += len(response.content)

    requests = "ollama_asgi_requests_total"
    metrics = scrape_when(llm + "/_gateway/metrics", lambda m: value(m, requests) >= 10, ADMIN)

    assert value(metrics, requests, route="chat", model="llama3.2:latest", status="200") == 5
    assert value(metrics, requests, route="embed", model="nomic-embed-text:latest", status="200") == 2
    assert value(metrics, requests, route="chat", model="", status="400") == 1
    assert value(metrics, requests, route="chat", model="", status="401") == 1
    assert value(metrics, requests, route="chat", model="", status="429") == 1
    assert value(metrics, requests) == 10  # nothing else, and not the scrape itself (it ends after rendering)

    rejections = "ollama_asgi_rejections_total"
    assert value(metrics, rejections, route="chat", reason="bad_request") == 1
    assert value(metrics, rejections, route="chat", reason="auth") == 1
    assert value(metrics, rejections, route="chat", reason="rate_limit") == 1
    assert value(metrics, rejections) == 3

    assert value(metrics, "ollama_asgi_prompt_tokens_total") == prompt > 0
    assert value(metrics, "ollama_asgi_completion_tokens_total") == completion > 0
    assert value(metrics, "ollama_asgi_completion_tokens_total", model="nomic-embed-text:latest") == 0
    assert value(metrics, "ollama_asgi_response_bytes_total", route="chat") == sent["chat"]
    assert value(metrics, "ollama_asgi_response_bytes_total", route="embed") == sent["embed"]

    assert value(metrics, "ollama_asgi_time_to_first_token_seconds_count", route="chat") == 5
    assert value(metrics, "ollama_asgi_request_duration_seconds_count", route="chat") == 8
    assert value(metrics, "ollama_asgi_request_duration_seconds_count", route="embed") == 2
    assert value(metrics, "ollama_asgi_queue_wait_seconds_count", backend="backend-0") == 7

    assert value(metrics, "ollama_asgi_requests_in_flight", backend="backend-0") == 0
    assert value(metrics, "ollama_asgi_queue_depth", backend="backend-0") == 0
    assert value(metrics, "ollama_asgi_slots", backend="backend-0", pool="generate", model="llama3.2:latest") == 1
    assert value(metrics, "ollama_asgi_queue_limit", backend="backend-0") == 64
    assert value(metrics, "ollama_asgi_backend_up", backend="backend-0") == 1
    assert value(metrics, "ollama_asgi_backend_available", backend="backend-0") == 1
    assert value(metrics, "ollama_asgi_backend_breaker_opens_total", backend="backend-0") == 0
    assert value(metrics, "ollama_asgi_build_info", version=__version__) == 1

    again = scrape(llm + "/_gateway/metrics", ADMIN)
    assert value(again, requests, route="metrics", status="200") == 1  # the first scrape, once it ended


def test_queue_depth_and_in_flight_are_read_live(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    emulator.emulator.token_interval = 0.05
    server = host_factory(parallel=1)
    llm = server.url + "/llm"
    body = {"model": "llama3.2", "prompt": "w", "stream": False, "options": {"num_predict": 12}}
    threads = [threading.Thread(target=_generate, args=(llm, body)) for _ in range(3)]
    for thread in threads:
        thread.start()
    metrics: Samples = {}
    for _ in range(200):
        metrics = scrape(llm + "/_gateway/metrics", ADMIN)
        if value(metrics, "ollama_asgi_queue_depth") == 2:
            break
        time.sleep(0.02)
    assert value(metrics, "ollama_asgi_queue_depth", backend="backend-0", pool="generate") == 2
    assert value(metrics, "ollama_asgi_requests_in_flight", backend="backend-0", pool="generate") == 1
    for thread in threads:
        thread.join(30)
    metrics = scrape_when(
        llm + "/_gateway/metrics", lambda m: value(m, "ollama_asgi_queue_wait_seconds_count") == 3, ADMIN
    )
    assert value(metrics, "ollama_asgi_queue_depth") == 0
    assert value(metrics, "ollama_asgi_queue_wait_seconds_count") == 3
    gaps = {dict(ls)["quantile"] for (n, ls) in metrics if n == "ollama_asgi_slot_refill_gap_seconds"}
    assert gaps == {"0.5", "0.99", "1.0"}  # two requests were handed a freed slot


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (AUTH, 403)])
def test_metrics_are_for_administrators_by_default(llm_url: str, headers: dict[str, str], status: int) -> None:
    assert httpx.get(llm_url + "/_gateway/metrics", headers=headers).status_code == status


def test_metrics_can_be_public_or_off(host_factory: Callable[..., ServerThread]) -> None:
    public = host_factory(metrics_access="public")
    assert httpx.get(public.url + "/llm/_gateway/metrics").status_code == 200
    off = host_factory(metrics_access="off")
    assert httpx.get(off.url + "/llm/_gateway/metrics", headers=ADMIN).status_code == 404


def test_a_backend_that_is_down_reads_zero(host_factory: Callable[..., ServerThread]) -> None:
    server = host_factory(upstreams=(f"http://127.0.0.1:{free_port()}",))
    response = httpx.post(server.url + "/llm/api/chat", json=_chat(), headers=AUTH)
    assert response.status_code == 503
    metrics = scrape(server.url + "/llm/_gateway/metrics", ADMIN)
    assert value(metrics, "ollama_asgi_backend_up", backend="backend-0") == 0
    assert value(metrics, "ollama_asgi_rejections_total", reason="upstream_unreachable") == 1


def test_metrics_on_a_separate_port_need_no_credentials(host_factory: Callable[..., ServerThread]) -> None:
    port = free_port()
    server = host_factory(metrics_port=port, metrics_access="off")
    assert httpx.post(server.url + "/llm/api/chat", json=_chat(), headers=AUTH).status_code == 200
    metrics = scrape_when(f"http://127.0.0.1:{port}/metrics", lambda m: value(m, "ollama_asgi_requests_total") > 0)
    assert value(metrics, "ollama_asgi_requests_total", route="chat", status="200") == 1
    assert value(metrics, "ollama_asgi_backend_up", backend="backend-0") == 1
    assert httpx.get(server.url + "/llm/_gateway/metrics", headers=ADMIN).status_code == 404


def test_two_gateways_in_one_process_keep_their_own_counts(host_factory: Callable[..., ServerThread]) -> None:
    first, second = host_factory(), host_factory()
    assert httpx.post(first.url + "/llm/api/chat", json=_chat(), headers=AUTH).status_code == 200
    counted = scrape_when(
        first.url + "/llm/_gateway/metrics", lambda m: value(m, "ollama_asgi_requests_total") > 0, ADMIN
    )
    assert value(counted, "ollama_asgi_requests_total") == 1
    assert value(scrape(second.url + "/llm/_gateway/metrics", ADMIN), "ollama_asgi_requests_total") == 0


async def test_the_global_registry_is_shared_with_the_host_and_released_on_close(emulator: EmulatorServer) -> None:
    settings = Settings(upstreams=(emulator.url,), metrics_registry="global")
    gateway = OllamaGateway(settings)
    assert b"ollama_asgi_queue_limit" in prometheus_client.generate_latest()
    with pytest.raises(ConfigError, match="global registry"):
        OllamaGateway(settings)
    await gateway.aclose()
    assert b"ollama_asgi_queue_limit" not in prometheus_client.generate_latest()
    await OllamaGateway(settings).aclose()  # registers again once the first one let go


def test_the_hosts_own_scrape_of_the_global_registry_counts_every_request(emulator: EmulatorServer) -> None:
    settings = Settings.from_mapping(
        {"upstreams": [emulator.url], "api_keys": [f"ci={API_KEY}"], "metrics_registry": "global"}
    )
    with ServerThread(starlette_host(OllamaGateway(settings))) as server:  # its lifespan releases the registry
        for _ in range(3):
            assert httpx.post(server.url + "/llm/api/chat", json=_chat(), headers=AUTH).status_code == 200
        samples: Samples = {}
        deadline = time.monotonic() + 5
        while value(samples, "ollama_asgi_requests_total") < 3 and time.monotonic() < deadline:
            families = text_string_to_metric_families(prometheus_client.generate_latest().decode())
            samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    assert value(samples, "ollama_asgi_requests_total", route="chat", status="200") == 3
    assert value(samples, "ollama_asgi_completion_tokens_total", model="llama3.2:latest") > 0


def test_multiprocess_mode_adds_up_every_worker(emulator: EmulatorServer) -> None:
    with tempfile.TemporaryDirectory() as directory:
        env = {
            "OLLAMA_ASGI_UPSTREAMS": emulator.url,
            "OLLAMA_ASGI_API_KEYS": f"ci={API_KEY}",
            "OLLAMA_ASGI_METRICS_ACCESS": "public",
            "PROMETHEUS_MULTIPROC_DIR": directory,
        }
        workers = [GatewayProcess(env) for _ in range(2)]
        try:
            for worker in workers:
                worker.wait_ready()
            for worker in workers:
                for _ in range(2):
                    assert httpx.post(worker.url + "/api/chat", json=_chat(), headers=AUTH).status_code == 200
            metrics = scrape_when(
                workers[0].url + "/_gateway/metrics",
                lambda m: value(m, "ollama_asgi_requests_total", route="chat") >= 4,
            )
        finally:
            for worker in workers:
                worker.stop()
    assert value(metrics, "ollama_asgi_requests_total", route="chat", status="200") == 4
    assert value(metrics, "ollama_asgi_backend_up", backend="backend-0") == 1


# -- the Grafana dashboard and alert rules ---------------------------------------------------------

_METRIC = re.compile(r"\bollama_asgi_[a-z_]+\b")


def _exported_names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((EXAMPLES / "dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"] for v in dashboard.get("templating", {}).get("list", []) if isinstance(v.get("query"), str)]
    return exprs


def _alert_rules() -> list[dict[str, object]]:
    rules = yaml.safe_load((EXAMPLES / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def _every_kind_of_request(llm: str, emulator: EmulatorServer) -> None:
    """Requests that queue, load a model, stream, embed, fail to parse and fail mid-answer (parallel=1)."""
    emulator.emulator.token_interval = 0.01
    body = {"model": "llama3.2", "prompt": "w", "stream": False, "options": {"num_predict": 10}}
    threads = [threading.Thread(target=_generate, args=(llm, body)) for _ in range(3)]  # two wait for a slot
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with httpx.Client(base_url=llm, headers=AUTH, timeout=30) as client:
        assert client.post("/api/chat", json=_chat()).status_code == 200
        assert client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"}).status_code == 200
        assert client.post("/api/chat", content=b"{").status_code == 400
        emulator.emulator.inject(Fault(path="/api/chat", kind="midstream_error", after_lines=1))
        assert client.post("/api/chat", json=_chat()).status_code == 200  # and then an error line


# Every family the gateway exports with its lifecycle on and Redis configured: type, labels, help.
# The GPU families (gpu_memory_{total,used,free}_bytes) are there only where NVML sees a device.
EXPORTED: dict[str, tuple[str, tuple[str, ...], str]] = {
    "ollama_asgi_backend_available": (
        "gauge",
        ("backend",),
        "1 when placement sends new requests to the backend (breaker closed, not draining), else 0.",
    ),
    "ollama_asgi_backend_breaker_opens": ("counter", ("backend",), "Times the backend's circuit breaker opened."),
    "ollama_asgi_backend_up": ("gauge", ("backend",), "1 when the backend answered its last check or request, else 0."),
    "ollama_asgi_build_info": ("gauge", ("version",), "The running ollama-asgi version."),
    "ollama_asgi_cold_requests": (
        "counter",
        ("backend",),
        "Requests that found their model neither loaded nor loading.",
    ),
    "ollama_asgi_completion_tokens": ("counter", ("model",), "Tokens Ollama generated, from its final chunk."),
    "ollama_asgi_failed_answers": (
        "counter",
        ("model", "reason", "route"),
        "Answers that failed after their status (200) went out: a stream ended by an error, by route, model and reason (stream_broken, stream_error, client_stalled).",
    ),
    "ollama_asgi_model_evictions": ("counter", (), "Idle models the VRAM guard unloaded to make room."),
    "ollama_asgi_model_load_duration_seconds": (
        "histogram",
        ("backend", "model"),
        "Time the gateway's own model loads took, from the load request to Ollama's answer.",
    ),
    "ollama_asgi_model_load_failures": ("counter", (), "Model loads that failed."),
    "ollama_asgi_model_load_refusals": ("counter", (), "Loads refused because only busy models could have made room."),
    "ollama_asgi_model_load_waiters_coalesced": (
        "counter",
        (),
        "Requests that waited on a load already under way instead of starting their own.",
    ),
    "ollama_asgi_model_loads": ("counter", (), "Model loads the gateway made."),
    "ollama_asgi_model_vram_bytes": (
        "gauge",
        ("backend", "model"),
        "GPU memory of each loaded model, from Ollama's /api/ps.",
    ),
    "ollama_asgi_models_loading": ("gauge", (), "Model loads in progress now."),
    "ollama_asgi_num_ctx_choices": ("counter", ("reason",), "How each request's num_ctx was chosen."),
    "ollama_asgi_num_ctx_reloads_avoided": (
        "counter",
        (),
        "Requests that used the loaded runner's larger context instead of forcing a reload to a smaller bucket.",
    ),
    "ollama_asgi_num_ctx_requests": ("counter", ("num_ctx",), "Requests by the num_ctx sent to Ollama."),
    "ollama_asgi_prewarm_hits": (
        "counter",
        ("backend",),
        "Requests that found their model loaded thanks to pre-warming.",
    ),
    "ollama_asgi_prewarm_loads": ("counter", ("backend",), "Pre-warm loads started."),
    "ollama_asgi_prompt_tokens": ("counter", ("model",), "Prompt tokens Ollama evaluated, from its final chunk."),
    "ollama_asgi_queue_depth": ("gauge", ("backend", "pool", "model"), "Requests waiting for a backend slot."),
    "ollama_asgi_queue_limit": ("gauge", ("backend",), "Requests that may wait per backend before 503 (max_queue)."),
    "ollama_asgi_queue_wait_seconds": (
        "histogram",
        ("backend",),
        "Time an admitted request waited for a backend slot.",
    ),
    "ollama_asgi_redis_up": ("gauge", (), "1 when the shared Redis answers, else 0."),
    "ollama_asgi_rejections": (
        "counter",
        ("reason", "route"),
        "Requests the gateway answered itself instead of Ollama, by route and reason.",
    ),
    "ollama_asgi_request_duration_seconds": (
        "histogram",
        ("model", "route"),
        "Time from a request's arrival to the last byte of its answer.",
    ),
    "ollama_asgi_requests": (
        "counter",
        ("model", "route", "status"),
        "Requests answered, by route, model and HTTP status.",
    ),
    "ollama_asgi_requests_in_flight": ("gauge", ("backend", "pool", "model"), "Requests holding a backend slot."),
    "ollama_asgi_response_bytes": ("counter", ("route",), "Response body bytes sent to clients."),
    "ollama_asgi_service_time_seconds": (
        "gauge",
        ("backend", "pool", "model"),
        "Smoothed time a request holds a slot (basis of Retry-After).",
    ),
    "ollama_asgi_slot_refill_gap_seconds": (
        "gauge",
        ("backend", "pool", "model", "quantile"),
        "Time from a slot's release to its next grant, over the last refills (quantile 0.5, 0.99, 1).",
    ),
    "ollama_asgi_slots": ("gauge", ("backend", "pool", "model"), "Backend slots: requests Ollama is given at once."),
    "ollama_asgi_start_time_seconds": ("gauge", (), "When the gateway was created, in Unix time."),
    "ollama_asgi_time_to_first_token_seconds": (
        "histogram",
        ("model", "route"),
        "Time from a streamed generation's arrival (queueing and loading included) to its first token.",
    ),
    "ollama_asgi_vram_fragmentation_ratio": (
        "gauge",
        ("backend",),
        "GPU memory used by nothing the loaded models account for (CUDA contexts excluded), over total.",
    ),
}
NO_SAMPLES_WITHOUT_A_GPU = {"ollama_asgi_vram_fragmentation_ratio"}


def test_every_metric_keeps_its_name_type_labels_and_help(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    redis = RedisServer().start()
    try:
        llm = host_factory(parallel=1, redis_url=redis.url).url + "/llm"
        _every_kind_of_request(llm, emulator)
        scrape_when(llm + "/_gateway/metrics", lambda m: value(m, "ollama_asgi_requests_total") >= 7, ADMIN)
        text = httpx.get(llm + "/_gateway/metrics", headers=ADMIN).text
    finally:
        redis.stop()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {name: (f.type, f.documentation) for name, f in families.items()} == {
        name: (kind, documentation) for name, (kind, _, documentation) in EXPORTED.items()
    }
    for name, family in families.items():
        assert family.samples or name in NO_SAMPLES_WITHOUT_A_GPU, name
        labels = {label for sample in family.samples for label in sample.labels if label != "le"}
        assert labels == set(EXPORTED[name][1]) or not family.samples, name


def test_the_dashboard_and_alerts_use_only_metrics_the_gateway_exports(
    host_factory: Callable[..., ServerThread], emulator: EmulatorServer
) -> None:
    redis = RedisServer().start()
    try:
        server = host_factory(parallel=1, redis_url=redis.url)
        llm = server.url + "/llm"
        _every_kind_of_request(llm, emulator)
        exported = _exported_names(scrape(llm + "/_gateway/metrics", ADMIN))
    finally:
        redis.stop()
    exprs = _dashboard_exprs() + [str(rule["expr"]) for rule in _alert_rules()]
    used = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert {"ollama_asgi_queue_depth", "ollama_asgi_backend_up", "ollama_asgi_redis_up"} <= used
    # GPU readings exist only where NVML sees a GPU; they must at least be declared by the gateway.
    gpu_only = {n for n in used if n.startswith(("ollama_asgi_vram_", "ollama_asgi_gpu_"))}
    source = (Path(__file__).resolve().parent.parent / "ollama_asgi" / "live_metrics.py").read_text()
    assert all(n.removeprefix("ollama_asgi_") in source or n.split("_bytes")[0][12:] in source for n in gpu_only)
    assert used - gpu_only <= exported, f"not exported: {sorted(used - gpu_only - exported)}"


def test_the_alert_rules_are_well_formed() -> None:
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
        assert rule["labels"]["severity"] in ("warning", "critical")  # type: ignore[index]
        assert "summary" in rule["annotations"]  # type: ignore[operator]


def test_without_prometheus_client_the_gateway_serves_and_says_what_to_install(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ollama_asgi.metrics", None)  # as if prometheus-client were missing
    settings = Settings.from_mapping(
        dict(upstreams=(emulator.url,), api_keys=(f"ci={API_KEY}",), admin_api_keys=("ops=test-admin-key-1",))
    )
    with ServerThread(starlette_host(OllamaGateway(settings))) as server:
        assert httpx.post(server.url + "/llm/api/chat", json=_chat(), headers=AUTH).status_code == 200
        response = httpx.get(server.url + "/llm/_gateway/metrics", headers=ADMIN)
    assert response.status_code == 501 and "ollama-asgi[metrics]" in response.json()["error"]


@pytest.mark.parametrize(
    ("setting", "bad"), [("metrics_access", "everyone"), ("metrics_port", 70000), ("metrics_registry", "mine")]
)
def test_metrics_settings_are_validated(setting: str, bad: object) -> None:
    with pytest.raises(ConfigError, match=setting):
        Settings(**{setting: bad})


def test_listings_merged_across_backends_are_counted_as_answered(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    with EmulatorServer() as other:
        server = host_factory(upstreams=(emulator.url, other.url))
        response = httpx.get(server.url + "/llm/api/tags", headers={**AUTH, "X-Request-Id": "tags-1"})
        assert response.status_code == 200 and response.headers["x-request-id"] == "tags-1"
        metrics = scrape_when(
            server.url + "/llm/_gateway/metrics", lambda m: value(m, "ollama_asgi_requests_total") > 0, ADMIN
        )
    assert value(metrics, "ollama_asgi_requests_total", route="tags", status="200") == 1
    assert value(metrics, "ollama_asgi_backend_up") == 2


def test_lifecycle_metrics_count_loads_coalescing_and_context_choices(
    emulator: EmulatorServer, host_factory: Callable[..., ServerThread]
) -> None:
    import asyncio

    emulator.emulator.load_base_seconds = 0.3
    server = host_factory(parallel=2, vram_budget=int(2.7e9))
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}

    async def workload() -> None:
        async with httpx.AsyncClient(base_url=server.url + "/llm", headers=AUTH, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/api/chat", json=body) for _ in range(10)))
            assert [r.status_code for r in responses] == [200] * 10
            assert (await client.post("/api/chat", json={**body, "model": "qwen2.5:0.5b"})).status_code == 200

    asyncio.run(workload())
    url = server.url + "/llm/_gateway/metrics"
    samples = scrape_when(url, lambda s: value(s, "ollama_asgi_requests_total") >= 11, ADMIN)
    assert value(samples, "ollama_asgi_model_loads_total") == 2
    assert value(samples, "ollama_asgi_model_load_waiters_coalesced_total") == 9
    assert value(samples, "ollama_asgi_model_load_duration_seconds_count", model="llama3.2:latest") == 1
    assert value(samples, "ollama_asgi_model_load_duration_seconds_sum", model="llama3.2:latest") >= 0.3
    assert value(samples, "ollama_asgi_num_ctx_choices_total") == 11
    assert value(samples, "ollama_asgi_num_ctx_requests_total", num_ctx="2048") == 11
    assert value(samples, "ollama_asgi_cold_requests_total", backend="backend-0") == 2
    assert value(samples, "ollama_asgi_model_vram_bytes", model="llama3.2:latest") > 2e9
    assert value(samples, "ollama_asgi_models_loading") == 0
    status = httpx.get(server.url + "/llm/_gateway/status", headers=ADMIN).json()["lifecycle"]
    assert status["loads"] == 2 and "llama3.2:latest" in status["backends"]["backend-0"]["loaded"]
    assert status["recent_load_seconds"]["llama3.2:latest"] >= 0.3


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault(path="/api/chat", kind="close_midline", after_lines=2), "stream_broken"),
        (Fault(path="/api/chat", kind="midstream_error", after_lines=2), "stream_error"),
    ],
)
def test_an_answer_that_fails_after_its_status_is_counted_as_failed(
    emulator: EmulatorServer, llm_url: str, fault: Fault, reason: str
) -> None:
    """The client got a 200, so requests_total says 200; failed_answers_total is what alerts read."""
    emulator.emulator.inject(fault)
    with httpx.stream("POST", llm_url + "/api/chat", json=_chat(), headers=AUTH) as response:
        assert response.status_code == 200
        assert "error" in json.loads(list(response.iter_lines())[-1])
    samples = scrape_when(
        llm_url + "/_gateway/metrics", lambda s: value(s, "ollama_asgi_requests_total", route="chat") == 1, ADMIN
    )
    assert value(samples, "ollama_asgi_failed_answers_total", route="chat", model="llama3.2:latest", reason=reason) == 1
    assert value(samples, "ollama_asgi_failed_answers_total") == 1
    assert value(samples, "ollama_asgi_rejections_total") == 0


def test_a_whole_stream_is_not_a_failed_answer(llm_url: str) -> None:
    assert httpx.post(llm_url + "/api/chat", json=_chat(), headers=AUTH).status_code == 200
    samples = scrape_when(
        llm_url + "/_gateway/metrics", lambda s: value(s, "ollama_asgi_requests_total", route="chat") == 1, ADMIN
    )
    assert value(samples, "ollama_asgi_failed_answers_total") == 0
