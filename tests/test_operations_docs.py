"""The metrics the code defines, the ones docs/operations.md documents and the ones the Grafana
dashboard queries are the same names."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import services.gateway.observability
import services.registry.metrics
import services.runner.metrics
import services.scheduler.metrics  # noqa: F401 - importing registers the families

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def defined() -> set[str]:
    """Sample names as exposed (counters with `_total`), bare histogram names."""
    names = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("corral_"):
            continue
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def documented() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    return set(re.findall(r"^\| `(corral_[a-z_]+)` \|", text, re.MULTILINE))


def queried() -> set[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "corral.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = set()
    for name in re.findall(r"corral_[a-z_]+", " ".join(exprs)):
        for suffix in SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_every_metric_is_documented_and_nothing_else() -> None:
    assert defined() == documented()


def test_the_dashboard_queries_only_real_metrics_and_all_of_them() -> None:
    assert queried() == defined()
