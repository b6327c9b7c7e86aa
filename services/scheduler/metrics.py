"""The scheduler's Prometheus metrics: counters moved by the core's decisions, and gauges
read from its inventory when scraped (queue depth, instances, leases, bytes per device)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from services.scheduler.core import Scheduler

REJECTED = Counter("corral_scheduler_rejected_requests", "Requests refused with 503 because the queue was full.")
LOADS = Counter("corral_scheduler_model_loads", "Model loads finished, by result (ok, failed).", ["result"])
LOAD_SECONDS = Histogram(
    "corral_scheduler_load_duration_seconds",
    "Time to load a model on a runner.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
EVICTIONS = Counter("corral_scheduler_evictions", "Idle instances unloaded to make room for another model.")
EXPIRATIONS = Counter("corral_scheduler_expirations", "Instances unloaded when their keep_alive ran out.")


class InventoryGauges(Collector):
    """Reads the scheduler core at scrape time (the exposition runs on its event loop)."""

    def __init__(self) -> None:
        self.core: Scheduler | None = None

    def collect(self) -> Iterable[Metric]:
        queue = GaugeMetricFamily("corral_scheduler_queue_depth", "Requests waiting for a lease (or holding one).")
        instances = GaugeMetricFamily(
            "corral_scheduler_loaded_instances", "Model instances loaded or loading, by model and state.",
            labels=["model", "state"],
        )  # fmt: skip
        leases = GaugeMetricFamily(
            "corral_scheduler_active_leases", "Leases held (sequences in use), by model.", labels=["model"]
        )
        device_bytes = GaugeMetricFamily(
            "corral_scheduler_device_allocated_bytes", "Bytes the loaded instances hold on each device.",
            labels=["runner", "device"],
        )  # fmt: skip
        runners = GaugeMetricFamily("corral_scheduler_runners", "Runners registered.")
        core = self.core
        if core is not None:
            queue.add_metric([], core.pending)
            runners.add_metric([], len(core.inv.runners))
            by_state: dict[tuple[str, str], int] = {}
            by_model: dict[str, int] = {}
            for inst in list(core.inv.instances.values()):
                key = (inst.spec.name, inst.state.name.lower())
                by_state[key] = by_state.get(key, 0) + 1
                by_model[inst.spec.name] = by_model.get(inst.spec.name, 0) + inst.leases
            for (model, state), n in sorted(by_state.items()):
                instances.add_metric([model, state], n)
            for model, n in sorted(by_model.items()):
                leases.add_metric([model], n)
            for runner in list(core.inv.runners.values()):
                for device in runner.devices:
                    held = sum(i.device_bytes(device.id) for i in core.inv.on_runner(runner.id))
                    device_bytes.add_metric([runner.id, device.id], held)
        yield from (queue, instances, leases, device_bytes, runners)


INVENTORY = InventoryGauges()
REGISTRY.register(INVENTORY)
