"""The process's cgroup limits (v2, or v1 as a fallback), read from its own cgroup and its
ancestors: a container's memory limit and CPU quota, which the node-wide figures of psutil
do not show. Every reader takes the filesystem roots so tests can point it at a fake tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as a page-rounded 2**63 - 1 (9223372036854771712 with 4 KiB
# pages); anything this large is no limit.
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class CgroupMemory:
    """The process's cgroup memory limit and what it still leaves.

    `available` is limit minus working set (usage less the kernel-reclaimable
    inactive file cache, as container runtimes count it), at whichever level of the
    process's cgroup and its ancestors leaves the least; `limit` is the smallest limit.
    """

    limit: int
    available: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    """An integer file; None when missing or not a number ("max", garbage)."""
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _stat_value(path: Path, key: str) -> int:
    """One "key value" line of a memory.stat file; 0 when absent."""
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _self_cgroup_path(self_cgroup: Path, controller: str | None) -> str:
    """The process's cgroup path from /proc/self/cgroup: the v2 "0::/path" line when
    `controller` is None, else the v1 line listing `controller`; "/" when unknown."""
    for line in (_read(self_cgroup) or "").splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controller is None and hier == "0" and controllers == "":
            return path or "/"
        if controller is not None and controller in controllers.split(","):
            return path or "/"
    return "/"


def _with_ancestors(base: Path, path: str) -> list[Path]:
    """The process's cgroup directory under the mount `base` and its parents up to `base`.

    A limit on any ancestor (a Kubernetes pod, a systemd slice) binds too. Inside a
    cgroup namespace the path is "/". Without one, a container sees its own cgroup
    mounted at `base` while the path names it from the host's root: then `base` alone.
    """
    here = base / path.lstrip("/")
    if ".." in Path(path).parts or not here.is_dir():  # "..": outside our cgroup namespace
        return [base]
    dirs = [here]
    while here != base:
        here = here.parent
        dirs.append(here)
    return dirs


def _cgroup_dirs(root: Path, self_cgroup: Path, v1_controller: str) -> tuple[list[Path], bool]:
    """(directories to read, innermost first; True for cgroup v2). v2 is mounted at
    `root` itself; v1 (or a hybrid host) has one mount per controller under it."""
    if (root / "cgroup.controllers").is_file():
        return _with_ancestors(root, _self_cgroup_path(self_cgroup, None)), True
    base = root / v1_controller
    if base.is_dir():
        return _with_ancestors(base, _self_cgroup_path(self_cgroup, v1_controller)), False
    return [], False


def _memory_level(d: Path, v2: bool) -> tuple[int, int] | None:
    """(limit, working set) of one cgroup directory; None when it sets no limit."""
    if v2:
        limit = _read_int(d / "memory.max")  # "max" reads as None
        usage = _read_int(d / "memory.current") or 0
        inactive = _stat_value(d / "memory.stat", "inactive_file")
    else:
        limit = _read_int(d / "memory.limit_in_bytes")
        usage = _read_int(d / "memory.usage_in_bytes") or 0
        inactive = _stat_value(d / "memory.stat", "total_inactive_file")  # hierarchical
    if limit is None or limit >= _V1_UNLIMITED:
        return None
    return limit, max(0, usage - inactive)


def cgroup_memory(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> CgroupMemory | None:
    """The memory limit of the process's cgroup (v2, else v1); None when there is none."""
    dirs, v2 = _cgroup_dirs(root, self_cgroup, "memory")
    levels = [lv for d in dirs if (lv := _memory_level(d, v2)) is not None]
    if not levels:
        return None
    return CgroupMemory(
        limit=min(limit for limit, _ws in levels),
        available=max(0, min(limit - ws for limit, ws in levels)),
    )


def _cpu_level(d: Path, v2: bool) -> float | None:
    """CPUs' worth of time one cgroup directory allows (quota / period); None = no quota."""
    quota: int | None
    period: int | None
    if v2:  # cpu.max: "quota period" or "max period"
        fields = (_read(d / "cpu.max") or "").split()
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            return None
        quota, period = int(fields[0]), int(fields[1])
    else:  # cfs_quota_us is -1 when unlimited
        quota = _read_int(d / "cpu.cfs_quota_us")
        period = _read_int(d / "cpu.cfs_period_us")
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    return quota / period


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs the process's cgroup quota allows (e.g. 2.5), the tightest level; None = no quota."""
    dirs, v2 = _cgroup_dirs(root, self_cgroup, "cpu")
    return min((q for d in dirs if (q := _cpu_level(d, v2)) is not None), default=None)
