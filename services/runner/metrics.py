"""The runner's Prometheus metrics and the prompt-eval / decode spans of a generation.

Counters move once per step or per finished sequence, never per token, so the token loop
pays almost nothing for them; gauges are read from the instances when scraped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from opentelemetry import trace
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.telemetry import tracer
from services.runner.jobs import GenStats

BATCH_TOKENS = Histogram(
    "corral_runner_batch_tokens",
    "Tokens in one llama_decode step (generating rows plus prompt chunks).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
PROMPT_TOKENS = Counter("corral_runner_prompt_tokens", "Prompt tokens evaluated.")
GENERATED_TOKENS = Counter("corral_runner_generated_tokens", "Tokens generated.")
SEQUENCES = Counter("corral_runner_sequences", "Sequences finished (stopped, length or cancelled excluded).")
PREFIX_CACHE_HITS = Counter("corral_runner_prefix_cache_hits", "Sequences that reused a cached prompt prefix.")
PREFIX_CACHE_TOKENS = Counter("corral_runner_prefix_cache_tokens", "Prompt tokens reused from the KV cache.")
DRAFT_TOKENS = Counter(
    "corral_runner_draft_tokens",
    "Speculatively drafted tokens, by source (model: the draft model; lookup: the sequence's history) and result.",
    ["source", "result"],
)


def sequence_done(stats: GenStats) -> None:
    SEQUENCES.inc()
    PROMPT_TOKENS.inc(stats.prompt_eval_count)
    GENERATED_TOKENS.inc(stats.eval_count)
    if stats.prompt_cached_count:
        PREFIX_CACHE_HITS.inc()
        PREFIX_CACHE_TOKENS.inc(stats.prompt_cached_count)


def trace_phases(stats: GenStats) -> None:
    """Adds the finished generation's prompt-eval and decode phases as children of the current
    (Generate) span, timed backwards from now; nothing when the call is not traced."""
    parent = trace.get_current_span()
    if not parent.is_recording():
        return
    end = time.time_ns()
    decode_start = end - stats.eval_duration_ns
    prompt_start = decode_start - stats.prompt_eval_duration_ns
    t = tracer()
    prompt = t.start_span("prompt_eval", start_time=prompt_start)
    prompt.set_attribute("corral.prompt_eval_count", stats.prompt_eval_count)
    prompt.set_attribute("corral.prompt_cached_count", stats.prompt_cached_count)
    prompt.end(end_time=decode_start)
    decode = t.start_span("decode", start_time=decode_start)
    decode.set_attribute("corral.eval_count", stats.eval_count)
    decode.end(end_time=end)


InstanceFigures = Callable[[], Iterable[tuple[str, int, int, int, int]]]


class InstanceGauges(Collector):
    """Per-instance gauges, read at scrape time: `instances()` yields (instance id, active
    sequences, queued requests, KV cells used, KV cells in all); the runner sets it."""

    def __init__(self) -> None:
        self.instances: InstanceFigures = list

    def collect(self) -> Iterable[Metric]:
        labels = ["instance"]
        active = GaugeMetricFamily("corral_runner_active_sequences", "Sequences generating now.", labels=labels)
        queued = GaugeMetricFamily("corral_runner_queued_requests", "Requests waiting for a sequence.", labels=labels)
        used = GaugeMetricFamily("corral_runner_kv_cells_used", "KV cache cells holding tokens.", labels=labels)
        size = GaugeMetricFamily("corral_runner_kv_cells", "KV cache cells (num_ctx x num_parallel).", labels=labels)
        for instance_id, n_active, n_queued, n_used, n_cells in self.instances():
            active.add_metric([instance_id], n_active)
            queued.add_metric([instance_id], n_queued)
            used.add_metric([instance_id], n_used)
            size.add_metric([instance_id], n_cells)
        yield from (active, queued, used, size)


INSTANCES = InstanceGauges()
REGISTRY.register(INSTANCES)
