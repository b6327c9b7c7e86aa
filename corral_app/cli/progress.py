"""Progress of pull, push and create, drawn like Ollama's: a spinner line per status and a
bar per layer on a terminal; plain lines when the output is a pipe (no cursor tricks)."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from corral_app.cli.fmt import human_bytes


@dataclass
class _Bar:
    label: str
    total: int
    completed: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def rate(self) -> float:
        """Bytes per second over the last few seconds."""
        if len(self.samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self, width: int) -> str:
        pct = int(100 * self.completed / self.total) if self.total else 100
        if self.completed >= self.total:
            return f"{self.label}: 100% ▕{'█' * 16}▏ {human_bytes(self.total)}"
        rate = self.rate()
        eta = f"{int((self.total - self.completed) / rate)}s" if rate > 0 else ""
        tail = f" {human_bytes(self.completed)}/{human_bytes(self.total)}"
        tail += f"  {human_bytes(rate)}/s  {eta}" if rate > 0 else ""
        head = f"{self.label}: {pct:3d}% "
        bar_width = max(10, min(50, width - len(head) - len(tail) - 2))
        filled = bar_width * self.completed // self.total
        return f"{head}▕{'█' * filled}{' ' * (bar_width - filled)}▏{tail}"


class Progress:
    """Consumes progress events ({status, digest?, total?, completed?}) and draws them."""

    def __init__(self, out: TextIO | None = None, verb: str = "pulling") -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.verb = verb
        self.bars: dict[str, _Bar] = {}
        self.order: list[str] = []  # lines on screen: digests and statuses
        self.status = ""
        self.drawn = 0
        self.last_draw = 0.0

    def update(self, event: dict[str, Any]) -> None:
        digest, total = event.get("digest", ""), int(event.get("total") or 0)
        if digest and total:
            completed = int(event.get("completed") or 0)
            bar = self.bars.get(digest)
            if bar is None:
                label = f"{self.verb} {digest.removeprefix('sha256:')[:12]}"
                bar = self.bars[digest] = _Bar(label, total)
                self.order.append(digest)
                if not self.tty:
                    print(f"{label}: {human_bytes(total)}", file=self.out)
            now = time.monotonic()
            bar.completed = completed
            bar.samples = [s for s in [*bar.samples, (now, completed)] if now - s[0] <= 3]
            if not self.tty and completed >= total and completed:
                print(f"{bar.label}: 100%", file=self.out)
        else:
            self.status = str(event.get("status", ""))
            if not self.tty:
                print(self.status, file=self.out)
            else:
                self.order.append(f"status:{self.status}")
        self.draw()

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        width = shutil.get_terminal_size((80, 24)).columns
        lines = []
        for key in self.order:
            if key.startswith("status:"):
                lines.append(key.removeprefix("status:"))
            else:
                lines.append(self.bars[key].render(width))
        # Move up over what we drew last time and redraw everything.
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")
        for line in lines:
            self.out.write("\x1b[2K" + line[:width] + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def finish(self) -> None:
        self.draw(force=True)


def show(events: Iterable[dict[str, Any]], verb: str = "pulling", out: TextIO | None = None) -> dict[str, Any]:
    """Draw every event; returns the last one."""
    view = Progress(out, verb)
    last: dict[str, Any] = {}
    for event in events:
        view.update(event)
        last = event
    view.finish()
    return last
