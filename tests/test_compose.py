"""docker-compose.yml is valid and wires healthchecks as the README promises.

No Docker engine runs here; Debian's docker-compose still validates and renders the file.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rendered() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    out = subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "--profile", "gpu", "config"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return yaml.safe_load(out.stdout)


def test_four_services_share_one_image_and_volume(rendered: dict) -> None:
    services = rendered["services"]
    assert {"gateway", "scheduler", "runner", "registry"} <= set(services)
    for name in ("gateway", "scheduler", "runner", "registry"):
        assert services[name]["image"] == "corral:latest"
        targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in services[name]["volumes"]]
        assert "/models" in targets
        assert services[name]["healthcheck"]["test"][:3] == ["CMD", "corral", "healthcheck"]


def test_dependencies_wait_for_health(rendered: dict) -> None:
    services = rendered["services"]
    assert services["gateway"]["depends_on"]["registry"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert services["runner"]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert "11434" in str(services["gateway"]["ports"][0])
    assert all("ports" not in services[name] for name in ("scheduler", "runner", "registry"))


def test_gpu_runner_reserves_a_gpu(rendered: dict) -> None:
    devices = rendered["services"]["runner-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert devices[0]["count"] == "all"  # one runner drives them all, so it can spread a model
    assert rendered["services"]["runner-gpu"]["environment"]["CORRAL_RUNNER_DEVICE"] == "cuda"
