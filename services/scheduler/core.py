"""The scheduler core: leases on loaded instances, loads, keep-alive, eviction.

Decisions come from placement.py; this module holds the state, waits in a
bounded queue, and performs the runner I/O outside the state lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from corral.errors import CorralError
from corral.logs import fields
from corral.v1 import common_pb2, scheduler_pb2
from services.scheduler import loading, memory, metrics, placement
from services.scheduler.clock import Clock, SystemClock, Timer
from services.scheduler.inventory import Device, Instance, Inventory, LoadKey, Runner, State
from services.scheduler.runners import RunnerClient

log = logging.getLogger(__name__)

T = TypeVar("T")
QUEUE_FULL_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
# Loads of one request that may end with the runner gone (crashed or killed) before it fails:
# one retry covers a runner killed for another reason; a model that crashes every runner
# that loads it must not keep the client waiting through restarts until the load timeout.
LOAD_ATTEMPTS = 2


@dataclass(frozen=True)
class SchedulerConfig:
    keep_alive: float = 300.0
    context_length: int = 0
    num_parallel: int = 1
    max_loaded_models: int = 0
    max_queue: int = 512
    sched_spread: bool = False  # spread every model over all GPUs of its runner
    load_timeout: float = 300.0
    runner_timeout: float = 10.0
    heartbeat_interval: float = 2.0
    kv_cache_type: str = "f16"
    flash_attention: bool | None = None
    release_settle: float = 5.0  # seconds a device's free memory may lag an unload
    load_poll: float = 1.0  # seconds between load-progress checks
    lease_idle_timeout: float = 15.0  # leases on an instance with no work for this long are reclaimed


@dataclass(frozen=True)
class Lease:
    id: str
    runner_address: str
    instance_id: str
    load_duration_ns: int
    context_length: int


@dataclass(frozen=True)
class _Grant:
    instance: Instance


@dataclass(frozen=True)
class _Load:
    instance: Instance
    runner: Runner


@dataclass(frozen=True)
class _Unload:
    instances: tuple[Instance, ...]


class Scheduler:
    def __init__(self, config: SchedulerConfig, client: RunnerClient, clock: Clock | None = None) -> None:
        self.config = config
        self.client = client
        self.clock: Clock = clock or SystemClock()
        self.inv = Inventory()
        self._cond = asyncio.Condition()
        self._pending = 0
        self._loading: set[str] = set()  # runners with a load in flight (one at a time each)
        self._leases: dict[str, str] = {}  # lease id -> instance id
        self._timers: dict[str, Timer] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # ---- runners -------------------------------------------------------

    async def register(self, runner_id: str, address: str, devices: list[Device]) -> None:
        known = self.inv.runners.get(runner_id)
        if known is None or known.address != address:
            self.client.reset(address)
        async with self._cond:
            for old in [r for r in self.inv.runners.values() if r.address == address or r.id == runner_id]:
                self._forget_runner(old.id, "replaced by a new registration")
            self.inv.runners[runner_id] = Runner(runner_id, address, devices, last_seen=self.clock.monotonic())
            log.info(
                "runner registered",
                extra=fields(runner=runner_id, address=address, devices=",".join(d.id for d in devices)),
            )
            self._cond.notify_all()

    async def heartbeat(self, runner_id: str, devices: list[Device], instance_ids: Sequence[str] = ()) -> bool:
        async with self._cond:
            runner = self.inv.runners.get(runner_id)
            if runner is None:
                return False
            runner.on_report(devices, self.clock.monotonic(), settle=self.config.release_settle)
            strays = [i for i in instance_ids if i not in self.inv.instances]
        for instance_id in strays:
            self._spawn(self._unload_stray(runner, instance_id))
        return True

    async def _unload_stray(self, runner: Runner, instance_id: str) -> None:
        """An instance the runner holds that we do not know (loaded before this scheduler
        restarted, or a load we gave up on that finished anyway) only wastes its memory.
        One still serving a request (a stream that outlived a scheduler restart) is left
        until a later heartbeat finds it idle."""
        status = await self.client.status(runner.address)
        mine = [i for i in (status.instances if status else []) if i.instance_id == instance_id]
        if not status or (mine and mine[0].active_sequences + mine[0].queued_requests > 0):
            return
        log.warning(
            "unloading an instance unknown to the scheduler", extra=fields(runner=runner.id, instance=instance_id)
        )
        await self.client.unload(runner.address, instance_id)

    def _forget_runner(self, runner_id: str, why: str) -> None:
        """Drop a runner and every instance on it. Caller holds the lock."""
        self.inv.runners.pop(runner_id, None)
        for inst in self.inv.on_runner(runner_id):
            self._drop_instance(inst)
        log.warning("runner forgotten", extra=fields(runner=runner_id, why=why))
        self._cond.notify_all()

    def _drop_instance(self, inst: Instance) -> None:
        self.inv.instances.pop(inst.id, None)
        timer = self._timers.pop(inst.id, None)
        if timer:
            timer.cancel()

    async def _watch_runners(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            async with self._cond:
                now = self.clock.monotonic()
                for r in list(self.inv.runners.values()):
                    if now - r.last_seen > self.config.runner_timeout:
                        self._forget_runner(r.id, "missed heartbeats")
            await self._reclaim_abandoned_leases()

    async def _reclaim_abandoned_leases(self) -> None:
        """Leases whose holder vanished (a gateway that crashed mid-request never releases) would
        keep a slot busy forever: an instance with leases but no work on its runner for
        `lease_idle_timeout` gets them back."""
        held = [i for i in self.inv.instances.values() if i.leases and i.state is not State.LOADING]
        if not held:
            return
        busy: dict[str, int] = {}
        for runner_id in {i.runner_id for i in held}:
            runner = self.inv.runners.get(runner_id)
            status = await self.client.status(runner.address) if runner else None
            for st in status.instances if status else []:
                busy[st.instance_id] = st.active_sequences + st.queued_requests
        now = self.clock.monotonic()
        async with self._cond:
            for inst in held:
                if busy.get(inst.id, 1) > 0:  # working, or no answer: leave it alone
                    inst.idle_since = now
                    continue
                inst.idle_since = inst.idle_since or now
                if now - inst.idle_since < self.config.lease_idle_timeout:
                    continue
                stale = [lid for lid, iid in self._leases.items() if iid == inst.id]
                log.warning("reclaiming abandoned leases", extra=fields(model=inst.spec.name, leases=len(stale)))
                for lid in stale:
                    del self._leases[lid]
                inst.leases, inst.idle_since = 0, 0.0
                self._on_idle(inst)
            self._cond.notify_all()

    async def start(self) -> None:
        self._monitor = asyncio.create_task(self._watch_runners())

    async def stop(self) -> None:
        if self._monitor:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for task in list(self._background):
            task.cancel()
        await self.client.close()

    # ---- leases --------------------------------------------------------

    def load_key(self, spec: scheduler_pb2.ModelSpec, opts: common_pb2.LoadOptions) -> LoadKey:
        num_ctx = opts.num_ctx if opts.num_ctx > 0 else 0
        num_ctx = placement.default_num_ctx(
            self._gpu_memory(), num_ctx or self.config.context_length, spec.context_length_train
        )
        return LoadKey(
            model_digest=spec.model_digest,
            num_ctx=max(num_ctx, 4),
            num_batch=opts.num_batch or 512,
            num_gpu=opts.num_gpu if opts.HasField("num_gpu") else -1,
            main_gpu=opts.main_gpu if opts.HasField("main_gpu") else None,
            num_thread=opts.num_thread,
            num_parallel=opts.num_parallel or self.config.num_parallel,
            adapters=tuple((a.digest, a.path, a.scale or 1.0) for a in opts.adapters),
            kv_cache_type=opts.kv_cache_type or self.config.kv_cache_type,
            flash_attention=opts.flash_attention if opts.HasField("flash_attention") else self.config.flash_attention,
            draft=(opts.draft.digest, opts.draft.path, opts.draft.size_bytes) if opts.HasField("draft") else None,
            draft_num_predict=opts.draft_num_predict if opts.draft.digest else 0,
        )

    async def acquire(
        self, spec: scheduler_pb2.ModelSpec, opts: common_pb2.LoadOptions, keep_alive: float | None
    ) -> Lease:
        if self._pending >= self.config.max_queue:
            metrics.REJECTED.inc()
            raise CorralError(common_pb2.ERROR_REASON_QUEUE_FULL, QUEUE_FULL_MESSAGE)
        self._pending += 1
        started = time.monotonic()
        load_ns = 0
        runners_lost = 0
        try:
            while True:
                async with self._cond:
                    key = self.load_key(spec, opts)
                    action = self._decide(spec, key, keep_alive)
                    if isinstance(action, _Grant):
                        return self._grant(action.instance, spec, key, keep_alive, load_ns)
                    if action is None:
                        if self._work_in_progress():
                            started = time.monotonic()  # queued behind running work: not a failed load
                        await self._wait(started)
                        continue
                if isinstance(action, _Load):
                    t0 = time.monotonic_ns()
                    lost = await asyncio.shield(self._spawn(self._load(action.instance, action.runner)))
                    load_ns += time.monotonic_ns() - t0
                    runners_lost += lost
                    if runners_lost >= LOAD_ATTEMPTS:
                        raise CorralError(
                            common_pb2.ERROR_REASON_RUNNER_FAILED,
                            f"the runner stopped while loading {spec.name} ({runners_lost} times); its log says why",
                        )
                else:
                    await asyncio.shield(self._spawn(self._unload(action.instances)))
        finally:
            self._pending -= 1

    def _work_in_progress(self) -> bool:
        """Some instance holds leases, so a slot or memory will free up. Waiting for that is
        queueing, which only CORRAL_MAX_QUEUE bounds, as in Ollama; the load timeout is for a
        wait nothing will end (no runner, nothing running). Caller holds the lock."""
        return any(i.leases for i in self.inv.instances.values())

    async def _wait(self, started: float) -> None:
        """Wait for a state change; give up when no runner turned up within the load timeout."""
        remaining = self.config.load_timeout - (time.monotonic() - started)
        if remaining <= 0:
            raise CorralError(common_pb2.ERROR_REASON_NO_RUNNER, "timed out waiting for a runner to serve the model")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cond.wait(), timeout=min(remaining, self.config.heartbeat_interval))

    def _decide(
        self, spec: scheduler_pb2.ModelSpec, key: LoadKey, keep_alive: float | None
    ) -> _Grant | _Load | _Unload | None:
        """One step towards a lease. None means wait for a state change. Caller holds the lock."""
        same = [i for i in self.inv.for_model(key.model_digest) if i.state is not State.EXPIRING and i.key.covers(key)]
        if same:
            ready = [i for i in same if i.state is State.READY and i.leases < i.key.num_parallel]
            # The shortest context that covers the request, then the least busy.
            return _Grant(min(ready, key=lambda i: (i.key.num_ctx, i.leases))) if ready else None
        # The same model (weights, adapters, draft) loaded with other options is stale; another
        # model sharing the weights with other adapters or another draft model is not.
        stale = [
            i
            for i in self.inv.for_model(key.model_digest)
            if (i.key.adapters, i.key.draft) == (key.adapters, key.draft) and not i.key.covers(key)
        ]
        for inst in stale:  # load options changed: reload once the old instance is idle
            inst.state = State.EXPIRING
        idle_stale = tuple(i for i in stale if i.leases == 0)
        if idle_stale:
            return _Unload(idle_stale)
        if stale:
            return None
        est = memory.estimate(spec, key)
        decision = placement.place(self.inv, key, est, self.max_loaded_models(), self.config.sched_spread)
        if isinstance(decision, placement.Wait):
            return None
        if isinstance(decision, placement.Evict):
            victims = tuple(self.inv.instances[i] for i in decision.instance_ids)
            metrics.EVICTIONS.inc(len(victims))
            for v in victims:
                v.state = State.EXPIRING
            return _Unload(victims)
        if decision.runner_id in self._loading:
            return None
        runner = self.inv.runners[decision.runner_id]
        inst = Instance(
            id=uuid.uuid4().hex[:12],
            runner_id=decision.runner_id,
            key=key,
            spec=spec,
            memory_estimate=est.total,
            estimate=dict(decision.device_bytes),
            gpu_layers=decision.gpu_layers,
            main_gpu=decision.main_gpu,
            tensor_split=decision.tensor_split,
            keep_alive=self.config.keep_alive if keep_alive is None else keep_alive,
            last_used=self.clock.monotonic(),
        )
        self.inv.instances[inst.id] = inst
        self._loading.add(runner.id)
        log.info(
            "placing model",
            extra=fields(
                model=spec.name,
                runner=runner.id,
                estimate=est.total,
                kv=est.kv,
                gpu_layers=decision.gpu_layers,
                main_gpu=decision.main_gpu,
                tensor_split=list(decision.tensor_split),
            ),
        )
        return _Load(inst, self.inv.runners[decision.runner_id])

    def _grant(
        self, inst: Instance, spec: scheduler_pb2.ModelSpec, key: LoadKey, keep_alive: float | None, load_ns: int
    ) -> Lease:
        if spec.name != inst.spec.name:
            inst.also_serves[spec.name] = spec.manifest_digest
        inst.leases += 1
        inst.idle_since = 0.0
        inst.last_used = self.clock.monotonic()
        if keep_alive is not None:
            inst.keep_alive = keep_alive
        timer = self._timers.pop(inst.id, None)
        if timer:
            timer.cancel()
        inst.expires_at = math.inf
        # The request's own context, which may be shorter than the instance's (LoadKey.covers).
        context = min(key.num_ctx, inst.context_length or key.num_ctx)
        lease = Lease(uuid.uuid4().hex, self.inv.runners[inst.runner_id].address, inst.id, load_ns, context)
        self._leases[lease.id] = inst.id
        return lease

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _load(self, inst: Instance, runner: Runner) -> bool:
        """Loads the instance; True when the runner was lost during the load (the acquirer
        then waits for one to come back), else raises what the runner answered."""
        k = inst.key
        request = loading.load_request(inst)
        log.info("loading model", extra=fields(model=inst.spec.name, runner=runner.id, num_ctx=k.num_ctx))
        started = time.monotonic()
        try:
            try:
                resp = await loading.load_watching_progress(
                    self.client, runner.address, request, self.config.load_timeout, self.config.load_poll
                )
            finally:
                metrics.LOAD_SECONDS.observe(time.monotonic() - started)
        except CorralError as err:
            metrics.LOADS.labels("failed").inc()
            async with self._cond:
                self._loading.discard(runner.id)
                self._drop_instance(inst)
                if err.code == grpc.StatusCode.UNAVAILABLE:
                    self._forget_runner(runner.id, "unreachable during load")
                self._cond.notify_all()
            if err.code == grpc.StatusCode.UNAVAILABLE:
                return True
            raise
        except BaseException:
            metrics.LOADS.labels("failed").inc()
            async with self._cond:
                self._loading.discard(runner.id)
                self._drop_instance(inst)
                self._cond.notify_all()
            raise
        metrics.LOADS.labels("ok").inc()
        async with self._cond:
            self._loading.discard(runner.id)
            if inst.id in self.inv.instances:
                inst.state = State.READY
                inst.context_length = resp.context_length or k.num_ctx
                inst.size_bytes = resp.memory.total_bytes
                inst.size_vram_bytes = resp.memory.gpu_bytes
                inst.measured = loading.measured_by_device(inst, runner, resp.memory)
            self._cond.notify_all()
        return False

    async def _unload(self, instances: tuple[Instance, ...]) -> None:
        for inst in instances:
            runner = self.inv.runners.get(inst.runner_id)
            if runner is not None:
                await self.client.unload(runner.address, inst.id)
                runner.on_release({d.id: inst.device_bytes(d.id) for d in runner.devices}, self.clock.monotonic())
            log.info("unloaded model", extra=fields(model=inst.spec.name, instance=inst.id))
        async with self._cond:
            for inst in instances:
                self._drop_instance(inst)
            self._cond.notify_all()

    async def release(self, lease_id: str, runner_failed: bool = False) -> None:
        async with self._cond:
            inst_id = self._leases.pop(lease_id, None)
            inst = self.inv.instances.get(inst_id) if inst_id else None
            if inst is None:
                return
            inst.leases -= 1
            inst.last_used = self.clock.monotonic()
            runner = self.inv.runners.get(inst.runner_id)
        if runner_failed and runner is not None and not await self.client.alive(runner.address):
            async with self._cond:
                self._forget_runner(runner.id, "failed while serving a request")
            return
        async with self._cond:
            if inst.leases == 0:
                self._on_idle(inst)
            self._cond.notify_all()

    def _on_idle(self, inst: Instance) -> None:
        """Start the keep-alive clock, or unload now. Caller holds the lock."""
        if inst.state is State.EXPIRING or inst.keep_alive <= 0:
            inst.state = State.EXPIRING
            self._spawn(self._unload((inst,)))
            return
        if math.isinf(inst.keep_alive):
            return
        inst.expires_at = self.clock.time() + inst.keep_alive
        self._timers[inst.id] = self.clock.call_later(inst.keep_alive, self._expire, inst.id)

    def _expire(self, instance_id: str) -> None:
        self._timers.pop(instance_id, None)
        inst = self.inv.instances.get(instance_id)
        if inst is not None and inst.idle:
            inst.state = State.EXPIRING
            metrics.EXPIRATIONS.inc()
            self._spawn(self._unload((inst,)))

    async def unload_model(self, model_digest: str, manifest_digest: str = "") -> bool:
        """keep_alive 0 with an empty prompt: unload once idle, with the instances that serve
        the model (loaded for it, or shared with it: Instance.also_serves)."""
        async with self._cond:
            found = [
                i for i in self.inv.for_model(model_digest) if not manifest_digest or i.serves_manifest(manifest_digest)
            ]
            for inst in found:
                inst.keep_alive = 0
                if inst.idle:
                    self._on_idle(inst)
            return bool(found)

    @property
    def pending(self) -> int:
        return self._pending

    def max_loaded_models(self) -> int:
        gpus = sum(len(r.gpus) for r in self.inv.runners.values())
        return placement.max_loaded(self.config.max_loaded_models, gpus)

    def _gpu_memory(self) -> int:
        return sum(g.total_memory for r in self.inv.runners.values() for g in r.gpus)

    def default_num_ctx(self) -> int:
        return placement.default_num_ctx(self._gpu_memory(), self.config.context_length, 0)

    def loaded(self) -> list[Instance]:
        # Latest expiry first; "forever" and busy instances lead.
        return sorted(self.inv.instances.values(), key=lambda i: -i.expires_at)
