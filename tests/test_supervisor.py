from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from corral.config import Settings
from corral_app.supervisor import Child, Supervisor, accepts, plan, runner_devices


def test_children_talk_over_sockets_in_the_runtime_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"CORRAL_HOST": "127.0.0.1:12000", "CORRAL_MODELS": str(tmp_path / "m")})
    children = plan(settings, tmp_path / "rt", {"PATH": "/usr/bin"})
    names = [c.name for c in children]
    assert names[0] == "registry" and names[-1] == "gateway"
    assert any(n.startswith("runner-") for n in names)
    env = children[0].env
    assert env["CORRAL_REGISTRY_ADDR"] == f"unix:{tmp_path / 'rt' / 'registry.sock'}"
    assert env["CORRAL_SCHEDULER_ADDR"] == f"unix:{tmp_path / 'rt' / 'scheduler.sock'}"
    assert env["CORRAL_MODELS"] == str(tmp_path / "m")
    assert env["CORRAL_HOST"] == "127.0.0.1:12000"
    runner = next(c for c in children if c.service == "runner")
    assert runner.env["CORRAL_RUNNER_ADDR"].startswith(f"unix:{tmp_path / 'rt'}")
    assert runner.env["CORRAL_RUNNER_ADVERTISE_ADDR"] == runner.env["CORRAL_RUNNER_ADDR"]


def test_two_stacks_never_share_an_address(tmp_path: Path) -> None:
    a = plan(Settings.from_env({"CORRAL_HOST": ":1"}), tmp_path / "a", {})
    b = plan(Settings.from_env({"CORRAL_HOST": ":2"}), tmp_path / "b", {})
    addrs_a = {v for c in a for k, v in c.env.items() if k.endswith("_ADDR")}
    addrs_b = {v for c in b for k, v in c.env.items() if k.endswith("_ADDR")}
    assert addrs_a and not addrs_a & addrs_b


def test_one_runner_drives_every_gpu(tmp_path: Path) -> None:
    children = plan(Settings.from_env({}), tmp_path, {}, runner_devices(2))
    [runner] = [c for c in children if c.service == "runner"]
    assert runner.name == "runner-cuda0-1"
    assert runner.env["CORRAL_RUNNER_DEVICE"] == "cuda:0,1"
    assert runner.env["CORRAL_RUNNER_ADDR"] == f"unix:{tmp_path / 'runner-cuda0-1.sock'}"


def test_runner_devices() -> None:
    assert runner_devices(0) == "cpu"
    assert runner_devices(1) == "cuda:0"
    assert runner_devices(4) == "cuda:0,1,2,3"
    assert runner_devices() in ("cpu", "cuda:0") or runner_devices().startswith("cuda:0,")  # this host


def test_cpu_runner_by_default(tmp_path: Path) -> None:
    [runner] = [c for c in plan(Settings.from_env({}), tmp_path, {}) if c.service == "runner"]
    assert (runner.name, runner.env["CORRAL_RUNNER_DEVICE"]) == ("runner-cpu", "cpu")
    assert runner.env["CORRAL_RUNNER_ADDR"] == f"unix:{tmp_path / 'runner-cpu.sock'}"


def test_the_gateway_starts_once_the_services_listen(tmp_path: Path) -> None:
    """A stand-in service takes a second to listen; the stand-in gateway records, when it
    starts, whether that socket already accepts connections."""
    sock = tmp_path / "registry.sock"
    seen = tmp_path / "seen"
    service = (
        "import socket, time; time.sleep(1.0); s = socket.socket(socket.AF_UNIX);"
        f" s.bind({str(sock)!r}); s.listen(); time.sleep(60)"
    )
    gateway = (
        "import socket, pathlib; s = socket.socket(socket.AF_UNIX);"
        f" ok = s.connect_ex({str(sock)!r}) == 0; pathlib.Path({str(seen)!r}).write_text(str(ok));"
        " import time; time.sleep(60)"
    )
    children = [
        Child("gateway", "gateway", {}, command=[sys.executable, "-c", gateway]),  # listed first on purpose
        Child("registry", "registry", {}, listen=f"unix:{sock}", command=[sys.executable, "-c", service]),
    ]
    sup = Supervisor(children)
    try:
        sup.start()
        deadline = time.monotonic() + 30
        while not seen.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen.read_text() == "True"
    finally:
        sup.stop_all()
    assert all(c.proc is not None and c.proc.poll() is not None for c in children)


def test_accepts() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert accepts(f"127.0.0.1:{s.getsockname()[1]}")
    assert not accepts("unix:/nonexistent/x.sock")
