"""Every configuration variable Corral reads, in one place.

Each setting is read from `CORRAL_<NAME>` first and then from its Ollama alias,
when Ollama has the same knob. docs/configuration.md documents the same table;
tests/test_config.py keeps the two in step.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from corral import logs
from corral.durations import parse_keep_alive


@dataclass(frozen=True)
class Var:
    name: str
    default: str
    doc: str
    alias: str = ""


VARS: tuple[Var, ...] = (
    Var("CORRAL_HOST", "127.0.0.1:11434", "Where the gateway listens and where the CLI finds it.", "OLLAMA_HOST"),
    Var("CORRAL_MODELS", "~/.corral/models", "Model store directory (Ollama layout).", "OLLAMA_MODELS"),
    Var("CORRAL_KEEP_ALIVE", "5m", "Default keep-alive of a loaded model; negative = forever.", "OLLAMA_KEEP_ALIVE"),
    Var("CORRAL_CONTEXT_LENGTH", "0", "Default num_ctx; 0 = chosen from device memory.", "OLLAMA_CONTEXT_LENGTH"),
    Var("CORRAL_NUM_PARALLEL", "1", "Parallel sequences per loaded model.", "OLLAMA_NUM_PARALLEL"),
    Var(
        "CORRAL_MAX_LOADED_MODELS", "0", "Models loaded at once; 0 = 3 per GPU (3 on CPU).", "OLLAMA_MAX_LOADED_MODELS"
    ),
    Var(
        "CORRAL_SCHED_SPREAD",
        "",
        "1 = spread every model over all GPUs of its runner, even when one GPU would hold it.",
        "OLLAMA_SCHED_SPREAD",
    ),
    Var("CORRAL_MAX_QUEUE", "512", "Requests waiting in the scheduler before 503.", "OLLAMA_MAX_QUEUE"),
    Var("CORRAL_LOAD_TIMEOUT", "5m", "Give up on a model load after this long.", "OLLAMA_LOAD_TIMEOUT"),
    Var("CORRAL_NUM_THREAD", "0", "Threads per model instance; 0 = physical cores."),
    Var(
        "CORRAL_FLASH_ATTENTION", "", "Force flash attention on (1) or off (0); empty = auto.", "OLLAMA_FLASH_ATTENTION"
    ),
    Var("CORRAL_KV_CACHE_TYPE", "f16", "KV cache type: f16, q8_0 or q4_0.", "OLLAMA_KV_CACHE_TYPE"),
    Var(
        "CORRAL_BATCH_INVARIANT",
        "",
        "1 = CPU kernels that give a sequence the same logits whatever shares its batch, so greedy text never"
        " depends on load, prefix sharing or caching, and speculative decoding is on by default; implies"
        " flash attention and a q8_0 KV cache (unless q4_0 is set). Costs about a third of prompt speed"
        " and a few percent of decode speed (docs/runner.md).",
    ),
    Var("CORRAL_DEBUG", "", "Log level: 1 = debug, 2 = trace (as OLLAMA_DEBUG); empty = info.", "OLLAMA_DEBUG"),
    Var("CORRAL_LOG_FORMAT", "", "Log lines: json, text, or empty = text on a terminal and JSON otherwise."),
    Var(
        "CORRAL_LOG_FILE",
        "",
        "Also log (JSON lines) to this file, one per service: `corral.log` becomes `corral-gateway.log`;"
        " a `{service}` in the path is replaced instead; empty = stderr only.",
    ),
    Var("CORRAL_LOG_MAX_BYTES", "104857600", "Rotate a log file when it reaches this size; 0 = never rotate."),
    Var("CORRAL_LOG_BACKUPS", "3", "Rotated log files kept (`corral-gateway.log.1` …)."),
    Var("CORRAL_REGISTRY_METRICS", "", "`host:port` where the registry serves Prometheus metrics; empty = off."),
    Var("CORRAL_SCHEDULER_METRICS", "", "`host:port` where the scheduler serves Prometheus metrics; empty = off."),
    Var("CORRAL_RUNNER_METRICS", "", "`host:port` where a runner serves Prometheus metrics; empty = off."),
    Var("CORRAL_REGISTRY_ADDR", "127.0.0.1:50061", "gRPC address of the registry (listen and connect)."),
    Var("CORRAL_SCHEDULER_ADDR", "127.0.0.1:50062", "gRPC address of the scheduler (listen and connect)."),
    Var("CORRAL_GATEWAY_HEALTH_ADDR", "127.0.0.1:50060", "gRPC health endpoint of the gateway."),
    Var("CORRAL_RUNNER_ADDR", "127.0.0.1:50063", "gRPC address a runner listens on."),
    Var(
        "CORRAL_RUNNER_ADVERTISE_ADDR",
        "",
        "Address the scheduler uses to reach this runner; empty = CORRAL_RUNNER_ADDR.",
    ),
    Var(
        "CORRAL_RUNNER_DEVICE",
        "cpu",
        "Devices a runner drives: cpu, cuda:N, a list (cuda:0,1) or cuda (every NVIDIA GPU it sees).",
    ),
    Var("CORRAL_RUNNER_ID", "", "Stable runner id; empty = derived from host and device."),
    Var(
        "CORRAL_RUNNER_CACHE",
        "~/.corral/runner-cache",
        "Where a runner that cannot see the model store keeps the blobs it fetched from the registry.",
    ),
    Var("CORRAL_HEARTBEAT_INTERVAL", "2s", "How often runners send heartbeats."),
    Var(
        "CORRAL_CACHE_RAM",
        "2048",
        "MiB of host memory a runner keeps prompt KV snapshots in, across requests and models; also where "
        "idle slots' KV is parked out of a shared KV cache (docs/runner.md); 0 = off, and no parking.",
    ),
    Var("CORRAL_RUNNER_TIMEOUT", "10s", "A runner silent for this long is considered gone."),
    Var(
        "CORRAL_LEASE_IDLE_TIMEOUT",
        "15s",
        "Leases on a model its runner has had no work for this long are reclaimed (a crashed gateway's).",
    ),
    Var(
        "CORRAL_DRAIN_TIMEOUT",
        "30s",
        "On SIGTERM the gateway refuses new requests and lets running ones finish for at most this long.",
    ),
    Var("CORRAL_RUNTIME_DIR", "", "Where `corral serve` puts its Unix sockets; empty = a fresh temporary directory."),
    Var("CORRAL_ORIGINS", "", "Extra allowed CORS origins, comma-separated (wildcards allowed).", "OLLAMA_ORIGINS"),
    Var("CORRAL_API_KEY", "", "When set, every request but GET / needs `Authorization: Bearer <key>`."),
    Var("CORRAL_NOPRUNE", "", "1 = keep the layers an overwritten model no longer uses.", "OLLAMA_NOPRUNE"),
    Var("CORRAL_BLOB_GRACE", "1h", "Unreferenced blobs younger than this survive garbage collection."),
    Var("CORRAL_VERIFY_INTERVAL", "24h", "Re-hash every stored blob this often in the background; 0 = never."),
    Var(
        "CORRAL_RESPONSES_MAX",
        "10000",
        "Stored `/v1/responses` (`store: true`) kept at most; the oldest go first.",
    ),
    Var("CORRAL_RESPONSES_TTL", "720h", "A stored `/v1/responses` response is forgotten after this long."),
    Var("CORRAL_PULL_PARALLEL", "4", "Ranged parts downloaded at once per blob during a pull."),
    Var(
        "CORRAL_REDIRECT_HOSTS",
        "",
        "Other hosts a registry may redirect blob downloads to, comma-separated (`cdn.example.com`,"
        " `*.r2.cloudflarestorage.com`, optional `:port`); followed without the registry's token; empty = none.",
    ),
)

_BY_NAME = {v.name: v for v in VARS}


def raw(name: str, env: dict[str, str] | None = None) -> str:
    """The value of a variable: CORRAL_ name, then its alias, then its default.

    Surrounding whitespace and quotes are trimmed, as Ollama does.
    """
    source: Mapping[str, str] = os.environ if env is None else env
    var = _BY_NAME[name]
    for key in (var.name, var.alias):
        if key and source.get(key, "").strip():
            return source[key].strip().strip("\"'")
    return var.default


def _int(name: str, env: dict[str, str] | None) -> int:
    value = raw(name, env)
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {value!r}") from exc


def _list(value: str) -> tuple[str, ...]:
    """A comma-separated value's non-empty items, trimmed."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _bool_or_none(value: str) -> bool | None:
    if not value:
        return None
    return value.lower() not in {"0", "false", "no", "off"}


def bracket_ipv6(address: str) -> str:
    """`fd00::5:50063` -> `[fd00::5]:50063`: an address built as `$(POD_IP):port` must stay a
    valid gRPC target when the pod IP is IPv6. Anything else is returned unchanged."""
    host, sep, port = address.rpartition(":")
    if address.startswith(("unix:", "[")) or not sep or not port.isdigit() or ":" not in host:
        return address
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return address
    return f"[{host}]:{port}"


def parse_host(value: str) -> tuple[str, int]:
    """Parse OLLAMA_HOST-style values: "host", "host:port", "http://host:port", ":port"."""
    value = value.strip()
    scheme_port = 11434
    for scheme, port in (("http://", 80), ("https://", 443)):
        if value.startswith(scheme):
            value, scheme_port = value[len(scheme) :], port
    value = value.split("/", 1)[0]
    host, port = value, 11434
    if value.startswith("["):  # [::1]:port
        host, _, rest = value[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 11434
    elif value.count(":") == 1:
        host, _, p = value.partition(":")
        port = int(p) if p.isdigit() else 11434
    elif value and scheme_port != 11434:
        port = scheme_port
    return host or "127.0.0.1", port


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    models_dir: Path
    keep_alive_seconds: float
    context_length: int
    num_parallel: int
    max_loaded_models: int
    max_queue: int
    sched_spread: bool
    load_timeout_seconds: float
    num_thread: int
    flash_attention: bool | None
    kv_cache_type: str
    batch_invariant: bool
    debug: int  # logging level, corral.logs.level
    registry_addr: str
    gateway_health_addr: str
    scheduler_addr: str
    runner_addr: str
    runner_advertise_addr: str
    runner_device: str
    runner_id: str
    runner_cache: Path
    cache_ram_mib: int
    heartbeat_interval_seconds: float
    runner_timeout_seconds: float
    runtime_dir: str
    lease_idle_timeout_seconds: float = 15.0
    drain_timeout_seconds: float = 30.0
    redirect_hosts: tuple[str, ...] = ()  # host patterns, checked by services/registry/redirects.py

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        host, port = parse_host(raw("CORRAL_HOST", env))
        runner_addr = raw("CORRAL_RUNNER_ADDR", env)
        # Batch invariance needs the attention kernel that never tiles or splits: flash
        # attention over a quantized KV cache (docs/runner.md, Batch invariance).
        invariant = bool(_bool_or_none(raw("CORRAL_BATCH_INVARIANT", env)))
        kv_type = raw("CORRAL_KV_CACHE_TYPE", env).lower()
        return cls(
            host=host,
            port=port,
            models_dir=Path(raw("CORRAL_MODELS", env)).expanduser(),
            keep_alive_seconds=parse_keep_alive(raw("CORRAL_KEEP_ALIVE", env), env_style=True),
            context_length=_int("CORRAL_CONTEXT_LENGTH", env),
            num_parallel=max(1, _int("CORRAL_NUM_PARALLEL", env)),
            max_loaded_models=_int("CORRAL_MAX_LOADED_MODELS", env),
            max_queue=_int("CORRAL_MAX_QUEUE", env),
            sched_spread=bool(_bool_or_none(raw("CORRAL_SCHED_SPREAD", env))),
            load_timeout_seconds=parse_keep_alive(raw("CORRAL_LOAD_TIMEOUT", env), env_style=True),
            num_thread=_int("CORRAL_NUM_THREAD", env),
            flash_attention=True if invariant else _bool_or_none(raw("CORRAL_FLASH_ATTENTION", env)),
            kv_cache_type="q8_0" if invariant and kv_type in ("", "f16") else kv_type,
            batch_invariant=invariant,
            debug=logs.level(raw("CORRAL_DEBUG", env)),
            registry_addr=raw("CORRAL_REGISTRY_ADDR", env),
            gateway_health_addr=raw("CORRAL_GATEWAY_HEALTH_ADDR", env),
            scheduler_addr=raw("CORRAL_SCHEDULER_ADDR", env),
            runner_addr=runner_addr,
            runner_advertise_addr=bracket_ipv6(raw("CORRAL_RUNNER_ADVERTISE_ADDR", env) or runner_addr),
            runner_device=raw("CORRAL_RUNNER_DEVICE", env),
            runner_id=raw("CORRAL_RUNNER_ID", env),
            runner_cache=Path(raw("CORRAL_RUNNER_CACHE", env)).expanduser(),
            cache_ram_mib=max(0, _int("CORRAL_CACHE_RAM", env)),
            heartbeat_interval_seconds=parse_keep_alive(raw("CORRAL_HEARTBEAT_INTERVAL", env), env_style=True),
            runner_timeout_seconds=parse_keep_alive(raw("CORRAL_RUNNER_TIMEOUT", env), env_style=True),
            runtime_dir=raw("CORRAL_RUNTIME_DIR", env),
            lease_idle_timeout_seconds=parse_keep_alive(raw("CORRAL_LEASE_IDLE_TIMEOUT", env), env_style=True),
            drain_timeout_seconds=parse_keep_alive(raw("CORRAL_DRAIN_TIMEOUT", env), env_style=True),
            redirect_hosts=_list(raw("CORRAL_REDIRECT_HOSTS", env)),
        )
