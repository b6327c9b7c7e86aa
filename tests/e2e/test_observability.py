"""Metrics, traces and request ids of the whole stack, observed from outside as an operator would.

One stack with every service's metrics port on, exporting spans over OTLP/HTTP to a collector
written here; real generations with Gemma, a real push and pull against Debian's
docker-registry, and the counters' deltas checked against what the responses reported.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.ggufs import write_tiny_gguf
from tests.registry.oci import OciRegistry
from tests.stack import Stack, create_model, free_port, start_stack, stop_stack

SERVICES = ("registry", "scheduler", "runner")
OPTIONS = {"temperature": 0, "num_predict": 12, "num_ctx": 512}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Collector:
    """An OTLP/HTTP trace receiver: decodes each export and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        collector.spans.extend(
                            Span(attrs.get("service.name", ""), s.name, s.trace_id.hex(), s.span_id.hex(),
                                 s.parent_span_id.hex())
                            for s in ss.spans
                        )  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, expected: set[tuple[str, str]], timeout: float = 20) -> list[Span]:
        """The spans of one trace, once every (service, span name) in `expected` has arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = [s for s in list(self.spans) if s.trace_id == trace_id]
            if expected <= {(s.service, s.name) for s in spans}:
                return spans
            time.sleep(0.1)
        got = sorted({(s.service, s.name) for s in self.spans if s.trace_id == trace_id})
        pytest.fail(f"trace {trace_id} incomplete: {got}")


@dataclass
class Observed:
    stack: Stack
    collector: Collector
    ports: dict[str, int]

    def scrape(self, service: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = self.stack.url + "/metrics" if service == "gateway" else f"http://127.0.0.1:{self.ports[service]}/metrics"
        text = httpx.get(url, timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Observed]:
    collector = Collector()
    ports = {s: free_port() for s in SERVICES}
    env = {f"CORRAL_{s.upper()}_METRICS": f"127.0.0.1:{p}" for s, p in ports.items()}
    env.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=collector.url,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    stack = start_stack(tmp_path_factory.mktemp("observed"), **env)
    try:
        assert create_model(stack.url, "gemma3", gemma_path)[-1] == {"status": "success"}
        yield Observed(stack, collector, ports)
    finally:
        stop_stack(stack)
        collector.server.shutdown()


def test_request_id_reaches_every_service_and_the_client(observed: Observed) -> None:
    """The first request loads the model: scheduler and runner log about it under its id, and
    the gateway writes its access line."""
    request_id = "obs-" + secrets.token_hex(6)
    r = httpx.post(
        observed.stack.url + "/api/generate",
        json={"model": "gemma3", "prompt": "Hi", "stream": False, "options": OPTIONS},
        headers={"X-Request-Id": request_id},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == request_id
    # The access line is written once the response has gone out, so the client can see the
    # response before the line reaches the stack's log: wait for it.
    deadline = time.monotonic() + 20
    while True:
        lines = [json.loads(line) for line in observed.stack.log_path.read_text().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line.get("request_id") == request_id]
        tagged = {line["service"] for line in mine}
        if {"gateway", "scheduler", "runner"} <= tagged or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {"gateway", "scheduler", "runner"} <= tagged, tagged
    access = [line for line in mine if line["msg"] == "request"]
    assert [(a["service"], a["method"], a["path"], a["status"]) for a in access] == [
        ("gateway", "POST", "/api/generate", 200)
    ]
    # An id the gateway made up comes back too; a hostile one is replaced.
    assert len(httpx.get(observed.stack.url + "/api/version").headers["x-request-id"]) == 32
    bad = httpx.get(observed.stack.url + "/api/version", headers={"X-Request-Id": "a b\tc"})
    assert bad.headers["x-request-id"] != "a b\tc"


def test_counters_move_by_what_the_responses_report(observed: Observed) -> None:
    url = observed.stack.url
    before = {s: observed.scrape(s) for s in ("gateway", *SERVICES)}
    eval_counts: list[int] = []
    prompt_counts: list[int] = []
    for stream in (False, True):
        r = httpx.post(
            url + "/api/generate",
            json={"model": "gemma3", "prompt": "Count to five:", "stream": stream, "options": OPTIONS},
            timeout=300,
        )
        assert r.status_code == 200, r.text
        final = json.loads(r.text.splitlines()[-1])
        eval_counts.append(final["eval_count"])
        prompt_counts.append(final["prompt_eval_count"])
    r = httpx.post(
        url + "/api/chat",
        json={"model": "gemma3", "messages": [{"role": "user", "content": "Name a colour."}], "options": OPTIONS},
        timeout=300,
    )
    final = json.loads(r.text.splitlines()[-1])
    eval_counts.append(final["eval_count"])
    prompt_counts.append(final["prompt_eval_count"])
    after = {s: observed.scrape(s) for s in ("gateway", *SERVICES)}

    def delta(service: str, name: str, **labels: str) -> float:
        return value(after[service], name, **labels) - value(before[service], name, **labels)

    model = {"model": "gemma3:latest"}
    assert delta("gateway", "corral_gateway_generated_tokens_total", **model) == sum(eval_counts)
    assert delta("gateway", "corral_gateway_prompt_tokens_total", **model) == sum(prompt_counts)
    assert delta("gateway", "corral_gateway_time_to_first_token_seconds_count", **model) == 3
    gaps = delta("gateway", "corral_gateway_inter_token_seconds_count", **model)
    assert 0 < gaps <= sum(eval_counts) - 3  # at most one gap between consecutive tokens
    generate_ok = {"route": "/api/generate", "method": "POST", "status": "200"}
    assert delta("gateway", "corral_gateway_requests_total", **generate_ok) == 2
    assert delta("gateway", "corral_gateway_requests_total", route="/api/chat", method="POST", status="200") == 1

    assert delta("runner", "corral_runner_generated_tokens_total") == sum(eval_counts)
    assert delta("runner", "corral_runner_prompt_tokens_total") == sum(prompt_counts)
    assert delta("runner", "corral_runner_sequences_total") == 3
    assert delta("runner", "corral_runner_batch_tokens_sum") == sum(eval_counts) + sum(prompt_counts) - 3
    assert delta("runner", "corral_runner_prefix_cache_hits_total") >= 1  # the repeated generate prompt

    sched = after["scheduler"]
    assert value(sched, "corral_scheduler_loaded_instances", model="gemma3:latest", state="ready") == 1
    assert value(sched, "corral_scheduler_model_loads_total", result="ok") >= 1
    assert value(sched, "corral_scheduler_queue_depth") == 0
    held = [v for (name, _), v in sched.items() if name == "corral_scheduler_device_allocated_bytes"]
    assert held and held[0] > 100e6  # Gemma's weights and KV on the CPU runner
    runner_gauges = [k for k in after["runner"] if k[0] == "corral_runner_kv_cells_used"]
    assert runner_gauges and value(after["runner"], *runner_gauges[0][:1], **dict(runner_gauges[0][1])) > 0

    ps = httpx.get(url + "/api/ps").json()["models"]
    assert ps[0]["active_sequences"] == 0 and ps[0]["num_parallel"] == 1


def test_registry_counts_transfer_bytes_and_verification_failures(
    observed: Observed, tmp_path: Path, oci: OciRegistry
) -> None:
    url = observed.stack.url
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf").path
    assert create_model(url, "tiny", tiny)[-1] == {"status": "success"}
    name = f"{oci.host}/library/tiny:latest"
    assert httpx.post(url + "/api/copy", json={"source": "tiny", "destination": name}).status_code == 200
    before = observed.scrape("registry")
    r = httpx.post(url + "/api/push", json={"model": name, "insecure": True, "stream": False}, timeout=120)
    assert r.json() == {"status": "success"}, r.text
    pushed = value(observed.scrape("registry"), "corral_registry_push_bytes_total")
    pushed -= value(before, "corral_registry_push_bytes_total")
    assert pushed >= tiny.stat().st_size
    for model in ("tiny", name):
        assert httpx.request("DELETE", url + "/api/delete", json={"model": model}).status_code == 200
    r = httpx.post(url + "/api/pull", json={"model": name, "insecure": True, "stream": False}, timeout=120)
    assert r.json() == {"status": "success"}, r.text
    bad = httpx.post(url + "/api/blobs/sha256:" + "0" * 64, content=b"not these bytes")
    assert bad.status_code == 400
    after = observed.scrape("registry")
    assert (
        value(after, "corral_registry_pull_bytes_total") - value(before, "corral_registry_pull_bytes_total") == pushed
    )
    for counter in ("corral_registry_pushes_total", "corral_registry_pulls_total"):
        assert value(after, counter, result="ok") - value(before, counter, result="ok") == 1
    failures = "corral_registry_blob_verification_failures_total"
    assert value(after, failures, source="upload") - value(before, failures, source="upload") == 1


def test_one_request_is_one_trace_across_the_services(observed: Observed) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    r = httpx.post(
        observed.stack.url + "/api/generate",
        json={"model": "gemma3", "prompt": "Hello", "stream": True, "options": OPTIONS},
        headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
        timeout=300,
    )
    assert r.status_code == 200
    expected = {
        ("corral-gateway", "POST /api/generate"),
        ("corral-registry", "corral.v1.RegistryService/ResolveModel"),
        ("corral-scheduler", "corral.v1.SchedulerService/AcquireModel"),
        ("corral-runner", "corral.v1.RunnerService/Generate"),
        ("corral-runner", "prompt_eval"),
        ("corral-runner", "decode"),
    }
    spans = observed.collector.trace(trace_id, expected)

    def one(service: str, name: str) -> Span:
        found = [s for s in spans if s.service == service and s.name == name]
        assert len(found) == 1, (service, name, spans)
        return found[0]

    gateway = one("corral-gateway", "POST /api/generate")
    assert gateway.parent_id == client_span  # the client's traceparent is honoured
    resolve = one("corral-registry", "corral.v1.RegistryService/ResolveModel")
    acquire = one("corral-scheduler", "corral.v1.SchedulerService/AcquireModel")
    generate = one("corral-runner", "corral.v1.RunnerService/Generate")
    for child in (resolve, acquire, generate):
        assert child.parent_id == gateway.span_id
    for phase in ("prompt_eval", "decode"):
        assert one("corral-runner", phase).parent_id == generate.span_id


def test_status_and_scrape_endpoints(observed: Observed) -> None:
    status = httpx.get(observed.stack.url + "/api/status").json()
    assert status["cloud"] == {"disabled": True, "source": "none"}
    assert status["services"] == {"gateway": "serving", "registry": "serving", "scheduler": "serving"}
    assert status["runners"] == 1
    for service in SERVICES:
        port = observed.ports[service]
        assert httpx.get(f"http://127.0.0.1:{port}/nope").status_code == 404
        assert httpx.post(f"http://127.0.0.1:{port}/metrics").status_code == 405
