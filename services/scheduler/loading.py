"""Loading an instance on a runner: the request, the progress-watching call, the measured result.

The core decides and keeps the state; this module only talks to one runner about one load.
"""

from __future__ import annotations

import asyncio
import time

from corral.errors import CorralError
from corral.v1 import common_pb2, runner_pb2
from services.scheduler.inventory import Instance, Runner
from services.scheduler.runners import RunnerClient


def load_request(inst: Instance) -> runner_pb2.LoadModelRequest:
    """The runner's LoadModel request for a placed instance."""
    k = inst.key
    opts = common_pb2.LoadOptions(
        num_ctx=k.num_ctx,
        num_batch=k.num_batch,
        num_gpu=inst.gpu_layers,
        num_thread=k.num_thread,
        num_parallel=k.num_parallel,
        kv_cache_type=k.kv_cache_type,
        adapters=[common_pb2.Adapter(digest=d, path=p, scale=s) for d, p, s in k.adapters],
        tensor_split=[float(n) for n in inst.tensor_split],
    )
    if inst.main_gpu is not None:
        opts.main_gpu = inst.main_gpu
    if k.flash_attention is not None:
        opts.flash_attention = k.flash_attention
    if k.draft is not None:
        digest, path, size = k.draft
        opts.draft.CopyFrom(common_pb2.DraftModel(digest=digest, path=path, size_bytes=size))
        if k.draft_num_predict:
            opts.draft_num_predict = k.draft_num_predict
    return runner_pb2.LoadModelRequest(
        instance_id=inst.id, model_path=inst.spec.model_path, model_digest=inst.spec.model_digest, options=opts
    )


async def load_watching_progress(
    client: RunnerClient, address: str, request: runner_pb2.LoadModelRequest, stall_timeout: float, poll: float
) -> runner_pb2.LoadModelResponse:
    """LoadModel with a stall timeout: it restarts whenever the runner reports more of the weights
    loaded, so a large model on a slow disk is not cut off while it progresses."""
    call = asyncio.ensure_future(client.load(address, request, timeout=None))
    progress, since = -1.0, time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({call}, timeout=poll)
            if done:
                return call.result()
            status = await client.status(address)
            now = time.monotonic()
            mine = [i for i in (status.instances if status else []) if i.instance_id == request.instance_id]
            if mine and mine[0].load_progress > progress:
                progress, since = mine[0].load_progress, now
            if now - since > stall_timeout:
                raise CorralError(
                    common_pb2.ERROR_REASON_LOAD_FAILED,
                    f"timed out waiting for the model to load: no progress for {stall_timeout:g}s "
                    f"({max(progress, 0) * 100:.0f}% loaded)",
                )
    finally:
        if not call.done():
            call.cancel()  # the runner aborts the load when its caller goes away


def measured_by_device(inst: Instance, runner: Runner, mem: runner_pb2.MemoryUsage) -> dict[str, int]:
    """What the runner says the instance holds per device. A CPU runner holds it all in RAM; a GPU
    runner that reports only a GPU total has it shared out like the estimate, and one that reports
    no GPU figures at all (llama.cpp's buffer lines missing) keeps the estimate, so the ledger
    never takes a loaded model for free memory."""
    if not runner.is_gpu:
        return {d.id: mem.total_bytes for d in runner.devices[:1]}
    if mem.devices:
        return {d.device_id: d.bytes for d in mem.devices}
    planned = sum(inst.estimate.values())
    if not mem.gpu_bytes or not planned:
        return dict(inst.estimate)
    return {dev: mem.gpu_bytes * b // planned for dev, b in inst.estimate.items()}
