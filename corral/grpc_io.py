"""gRPC's I/O mode for Corral's processes; must run before `grpc` is imported.

gRPC's EventEngine (its default I/O since 1.6x) hands each read and write of a stream to
its own thread pool: a streamed token woke about five more threads across the runner and
the gateway (bench/decode.py --cpu, /proc context switches). On a machine whose cores run
llama.cpp's decode threads every wake-up takes a core from them mid-step. gRPC's polling
I/O does the reads and writes on the thread that polls; single-stream decode through REST
measured about 1.5 % faster with it (docs/performance.md). No grpc import here: grpc reads
the variable when it is imported.
"""

from __future__ import annotations

import os

POLLING_IO = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"


def use_polling_io() -> None:
    """Before the process imports grpc. An operator's GRPC_EXPERIMENTS, even empty, wins."""
    os.environ.setdefault("GRPC_EXPERIMENTS", POLLING_IO)
