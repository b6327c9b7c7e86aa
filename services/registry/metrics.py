"""The registry's Prometheus metrics: transfer bytes and outcomes, and blob verification."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

from prometheus_client import Counter

T = TypeVar("T")

PULL_BYTES = Counter("corral_registry_pull_bytes", "Blob bytes downloaded from remote registries.")
PUSH_BYTES = Counter("corral_registry_push_bytes", "Blob bytes uploaded to remote registries.")
PULLS = Counter("corral_registry_pulls", "Pulls finished, by result (ok, failed, cancelled).", ["result"])
PUSHES = Counter("corral_registry_pushes", "Pushes finished, by result (ok, failed, cancelled).", ["result"])
VERIFY_FAILURES = Counter(
    "corral_registry_blob_verification_failures",
    "Blobs whose sha256 did not match: pulled, uploaded, or found corrupt on disk.",
    ["source"],
)


async def outcome(events: AsyncIterator[T], counter: Counter) -> AsyncIterator[T]:
    """Passes a transfer's progress through and counts how it ended."""
    result = "cancelled"  # the client went away before the end
    try:
        async for event in events:
            yield event
        result = "ok"
    except Exception:
        result = "failed"
        raise
    finally:
        counter.labels(result).inc()
