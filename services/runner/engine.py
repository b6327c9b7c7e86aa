"""A loaded model instance: one owner thread, driven from asyncio.

The owner thread creates the llama.cpp model and context, runs the batcher,
and frees everything on unload; nothing else touches them. The asyncio side
talks to it only through a thread-safe command queue; results come back
through delivery.py (one hand-over to the event loop per step, a buffer per
request), so the event loop never blocks on llama.cpp.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.batcher import Batcher
from services.runner.burst import BurstHold
from services.runner.delivery import EventBuffer, Outbox
from services.runner.draftmodel import DraftModel, check_vocab
from services.runner.jobs import GenerateSpec, GenEvent, Job
from services.runner.native import LoadSpec, MemoryUsage, NativeModel
from services.runner.progress import LoadProgress
from services.runner.promptcache import PromptCache

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class LoadInfo:
    context_length: int
    num_parallel: int
    memory: MemoryUsage
    load_duration_ns: int


class _Stop:
    pass


class _Wake:
    pass


@dataclass
class _Call:
    fn: Callable[[NativeModel], Any]
    future: concurrent.futures.Future[Any]


_Command = Job | _Call | _Stop | _Wake


def _resolve(fut: concurrent.futures.Future[Any], value: Any = None, exc: BaseException | None = None) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # the waiter went away
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class GenerationStream:
    """Async iterator of GenEvent for one request; `cancel()` frees its sequence."""

    def __init__(self, instance: Instance, job: Job, events: EventBuffer) -> None:
        self._instance = instance
        self._job = job
        self._events = events
        self._done = False

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> GenEvent:
        if self._done:
            raise StopAsyncIteration
        ev = await self._events.get()
        if isinstance(ev, CorralError):
            self._done = True
            raise ev
        self._done = ev.done
        return ev

    def cancel(self) -> None:
        """Idempotent; a no-op once the stream has finished."""
        if not self._done:
            self._done = True
            self._job.cancelled = True
            self._instance._wake()


class Instance:
    def __init__(self, instance_id: str, spec: LoadSpec, cache: PromptCache | None = None) -> None:
        """`cache`: the runner's host-memory prompt cache, shared by its instances."""
        self.id = instance_id
        self.cache = cache
        # This load's identity: the cache's key, so no snapshot outlives the llama.cpp
        # context it came from (an instance id may be loaded again with other weights).
        self.load_id = f"{instance_id}/{uuid.uuid4().hex}"
        self.spec = spec  # as requested; identifies the instance
        self._local = spec  # what the owner thread loads: spec with this host's paths
        self.info: LoadInfo | None = None
        self.progress = LoadProgress()
        self._stopping = False
        self.active_sequences = 0
        self.queued_requests = 0
        self.kv_cells_used = 0
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._outbox = Outbox()
        self._closed = False
        self._close_lock = threading.Lock()
        self._loaded: concurrent.futures.Future[LoadInfo] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name=f"llama-{instance_id}", daemon=True)
        self.batcher: Batcher | None = None  # owner thread's; others only read its counters

    # --- asyncio side ---

    @property
    def load_progress(self) -> float:
        return self.progress.value

    async def start(self, local: LoadSpec | None = None) -> LoadInfo:
        """Loads on the owner thread; raises CorralError(LOAD_FAILED) on failure.

        `local` is the spec with paths this host can open (see blobs.py), if they differ."""
        self._local = local or self.spec
        self._thread.start()
        self.info = await asyncio.wrap_future(self._loaded)
        return self.info

    async def stop(self) -> None:
        """Fails in-flight requests, frees the model and ends the thread (a load in progress is aborted)."""
        self._stopping = True
        self._put(_Stop())
        if self._thread.ident is not None:  # started
            await asyncio.wrap_future(self._stopped)

    def generate(self, spec: GenerateSpec) -> GenerationStream:
        events = EventBuffer()
        job = Job(spec, self._outbox.emitter(asyncio.get_running_loop(), events))
        self._put(job)
        return GenerationStream(self, job, events)

    async def call(self, fn: Callable[[NativeModel], T]) -> T:
        """Runs fn(model) on the owner thread between decode steps."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put(_Call(fn, fut))
        return await asyncio.wrap_future(fut)

    def _put(self, cmd: _Command) -> None:
        with self._close_lock:
            if not self._closed:
                self._commands.put(cmd)
                return
        if isinstance(cmd, _Stop | _Wake):
            return
        err = CorralError(common_pb2.ERROR_REASON_INSTANCE_NOT_FOUND, f"instance {self.id} is not loaded")
        if isinstance(cmd, Job):
            cmd.emit(err)
        elif isinstance(cmd, _Call):
            _resolve(cmd.future, exc=err)

    def _wake(self) -> None:
        self._put(_Wake())

    # --- owner thread ---

    def _run(self) -> None:
        self._outbox.bind()
        t0 = time.perf_counter_ns()
        nm: NativeModel | None = None
        try:
            nm = NativeModel(self._local, on_progress=self._on_load_progress)
            drafter = self._load_draft(nm)
        except BaseException as exc:
            if nm is not None:
                nm.free()
            if not isinstance(exc, CorralError):
                log.exception("load of %s failed", self.id)
                exc = CorralError(common_pb2.ERROR_REASON_LOAD_FAILED, f"load failed: {exc}")
            self._close()
            _resolve(self._loaded, exc=exc)
            _resolve(self._stopped)
            return
        batcher = self.batcher = Batcher(nm, self.cache, self.load_id, drafter)
        memory = nm.memory if drafter is None else nm.memory + drafter.nm.memory
        info = LoadInfo(nm.num_ctx, nm.num_parallel, memory, time.perf_counter_ns() - t0)
        _resolve(self._loaded, info)
        try:
            self._serve(nm, batcher)
        finally:
            batcher.abort_all(CorralError(common_pb2.ERROR_REASON_RUNNER_FAILED, f"instance {self.id} was unloaded"))
            if self.cache is not None:
                self.cache.drop_owner(self.load_id)
            self._close()
            if drafter is not None:
                drafter.free()
            nm.free()
            self.active_sequences = self.queued_requests = self.kv_cells_used = 0
            _resolve(self._stopped)

    def _load_draft(self, nm: NativeModel) -> DraftModel | None:
        """The draft model, with the model's context size and sequences, if the spec names one."""
        spec = self._local
        if not spec.draft_model_path:
            return None
        draft = NativeModel(replace(spec.draft(), num_ctx=nm.num_ctx, num_parallel=nm.num_parallel))
        try:
            check_vocab(nm, draft)
        except BaseException:
            draft.free()
            raise
        return DraftModel(draft, spec.draft_num_predict)

    def _serve(self, nm: NativeModel, batcher: Batcher) -> None:
        hold = BurstHold()
        first_step = 0  # requests the step after an idle spell started with (0: not that step)
        while True:
            # Block only when idle; otherwise take what arrived and step.
            idle = not batcher.has_work()
            jobs = self._take(nm, batcher, self._commands.get() if idle else self._poll())
            if idle and jobs and nm.num_parallel > 1:
                jobs = self._gather(nm, batcher, hold, jobs)
            if jobs is None:
                return
            if first_step:  # what came while it ran, unless the instance went idle since
                hold.first_step_done(first_step, 0 if idle else jobs)
            first_step = jobs if idle else 0
            try:
                batcher.reap_cancelled()
                batcher.admit()
                self._publish(batcher)  # before the step emits, so readers of events see it
                batcher.step()
            except Exception as exc:  # keep serving; fail only what was in flight
                log.exception("decode step of %s failed", self.id)
                batcher.abort_all(CorralError(common_pb2.ERROR_REASON_RUNNER_FAILED, f"runner error: {exc}"))
            self._publish(batcher)
            self._outbox.flush()

    def _take(self, nm: NativeModel, batcher: Batcher, cmd: _Command | None) -> int | None:
        """Handles `cmd` and whatever else is queued; returns the jobs among them, None on _Stop."""
        jobs = 0
        while cmd is not None:
            if isinstance(cmd, _Stop):
                return None
            if isinstance(cmd, Job):
                batcher.submit(cmd)
                jobs += 1
            elif isinstance(cmd, _Call):
                self._run_call(nm, cmd)
            cmd = self._poll()
        return jobs

    def _gather(self, nm: NativeModel, batcher: Batcher, hold: BurstHold, jobs: int) -> int | None:
        """An idle instance's first step waits for the rest of a burst (burst.py); returns the
        jobs in all, None on _Stop."""
        first = last = time.perf_counter()
        while (wait := hold.deadline(first, last) - time.perf_counter()) > 0:
            try:
                cmd = self._commands.get(timeout=wait)
            except queue.Empty:
                break
            more = self._take(nm, batcher, cmd)
            if more is None:
                return None
            if more:
                jobs, last = jobs + more, time.perf_counter()
        return jobs

    def _on_load_progress(self, fraction: float) -> bool:
        self.progress.loaded(fraction)
        return not self._stopping  # an unload during the load aborts it

    def _publish(self, batcher: Batcher) -> None:
        self.active_sequences = batcher.active
        self.queued_requests = len(batcher.waiting)
        self.kv_cells_used = batcher.kv_cells_used

    def _poll(self) -> _Command | None:
        try:
            return self._commands.get_nowait()
        except queue.Empty:
            return None

    @staticmethod
    def _run_call(nm: NativeModel, cmd: _Call) -> None:
        try:
            _resolve(cmd.future, cmd.fn(nm))
        except BaseException as exc:
            _resolve(cmd.future, exc=exc)

    def _close(self) -> None:
        """Refuses new commands and answers the ones still queued."""
        with self._close_lock:
            self._closed = True
        while (cmd := self._poll()) is not None:
            self._put(cmd)
        self._outbox.flush()
