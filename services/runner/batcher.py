"""Continuous batching of parallel sequences in one llama.cpp context.

Runs only on the instance's owner thread. Each `step()` builds ONE batch with
the pending token of every generating sequence plus prompt chunks of newly
admitted ones, calls llama_decode once, and samples every output row. Requests
join and leave between steps.

Prompt length: a prompt of num_ctx tokens or more is refused with
PROMPT_TOO_LONG (Ollama's runner message) unless the request sets `truncate`;
then, as Ollama's runner, the first num_keep tokens stay and the oldest middle
goes (context.py). The gateway already drops old chat messages to fit.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner import constraints, context, metrics
from services.runner.context import PROMPT_TOO_LONG
from services.runner.grammar import Candidates, TokenSampler, exact_subset_k, init_grammar, think_budget
from services.runner.jobs import GenerateSpec, GenEvent, GenStats, Job
from services.runner.logprobs import PositionLogprobs, position_logprobs
from services.runner.native import NativeModel
from services.runner.sampling import build_chain
from services.runner.textstream import TextStream

log = logging.getLogger(__name__)

MAX_REPEATS = 30  # Ollama aborts after more than 30 identical consecutive tokens
PREDICT_FACTOR = 10  # unset num_predict is bounded to 10 x num_ctx
# While sequences generate, a step's prompt chunk is sized so the step takes about this
# long (from the measured cost per batch token), so admitting a long prompt never
# stretches the running streams' inter-token gap much beyond it.
TARGET_STEP_S = 0.2
MIN_CHUNK = 16


@dataclass
class Seq:
    job: Job
    sampler: TokenSampler
    order: int
    prompt_done: int  # prompt tokens already in the KV cache
    n_past: int  # positions in the KV cache
    limit: int
    cached: int
    text: TextStream
    t_start: int
    pending: int | None = None  # sampled, not yet decoded
    generated: int = 0
    out_ids: list[int] = field(default_factory=list)
    last_tok: int = -1
    repeats: int = 0
    t_first: int = 0
    out_logprobs: list[PositionLogprobs] = field(default_factory=list)


@dataclass
class Slot:
    id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    seq: Seq | None = None
    last_used: float = 0.0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Batcher:
    def __init__(self, nm: NativeModel) -> None:
        self.nm = nm
        self.slots = [Slot(i) for i in range(nm.num_parallel)]
        self.waiting: deque[Job] = deque()
        self._order = itertools.count()
        self._cands: Candidates | None = None  # shared by constrained sequences; built on first use
        self.grammar_rejections = 0
        self._tok_cost = 0.0  # EMA of decode seconds per batch token; 0 = not measured yet

    @property
    def active(self) -> int:
        return sum(1 for s in self.slots if s.seq is not None)

    @property
    def kv_cells_used(self) -> int:
        return sum(len(s.cached) for s in self.slots)

    def has_work(self) -> bool:
        return bool(self.waiting) or self.active > 0

    def submit(self, job: Job) -> None:
        """Resolves the prompt's tokens and the grammar and queues the job, or reports why not."""
        spec = job.spec
        try:
            job.tokens = self._prompt_tokens(spec)
            job.grammar = constraints.resolve(spec.constraint, spec.thinking, spec.grammar, spec.json_schema).gbnf
        except CorralError as err:
            job.emit(err)
            return
        self.waiting.append(job)

    def _prompt_tokens(self, spec: GenerateSpec) -> list[int]:
        nm = self.nm
        if nm.is_embedding:
            raise CorralError(common_pb2.ERROR_REASON_UNSUPPORTED, "this model does not support generate")
        if spec.prompt_tokens:
            toks = list(spec.prompt_tokens)
            if any(t < 0 or t >= nm.n_vocab for t in toks):
                raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "prompt token id out of range")
        else:
            toks = nm.tokenize(spec.prompt, add_special=spec.add_bos, parse_special=True)
        if not toks:
            raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "the prompt is empty")
        if len(toks) >= nm.num_ctx:
            if not spec.truncate:
                raise CorralError(common_pb2.ERROR_REASON_PROMPT_TOO_LONG, PROMPT_TOO_LONG)
            toks = context.truncate_prompt(toks, nm.num_ctx, context.keep_count(nm, toks, spec.params.num_keep))
        return toks

    def reap_cancelled(self) -> None:
        """Frees cancelled sequences (KV included) before the next step."""
        for slot in self.slots:
            if slot.seq is not None and slot.seq.job.cancelled:
                self._release(slot, clear_kv=True)
        if any(j.cancelled for j in self.waiting):
            self.waiting = deque(j for j in self.waiting if not j.cancelled)

    def admit(self) -> None:
        while self.waiting:
            free = [s for s in self.slots if s.seq is None]
            if not free:
                return
            job = self.waiting.popleft()
            # Longest common prefix wins; among equals, the least recently used slot.
            slot = max(free, key=lambda s: (common_prefix(s.cached, job.tokens), -s.last_used))
            self._start(slot, job)

    def _start(self, slot: Slot, job: Job) -> None:
        nm, toks = self.nm, job.tokens
        keep = min(common_prefix(slot.cached, toks), len(toks) - 1)  # re-decode >= 1 token
        if keep > 0 and nm.n_swa > 0 and nm.seq_pos_min(slot.id) > max(0, keep - nm.n_swa):
            keep = 0  # the sliding window no longer holds what the suffix must attend to
        if keep > 0 and not nm.seq_rm(slot.id, keep):
            keep = 0
        if keep == 0:
            nm.seq_rm(slot.id)
        slot.cached = slot.cached[:keep]
        grammar = None
        try:
            if job.grammar:
                grammar = init_grammar(nm.vocab, job.grammar)
        except CorralError as err:
            job.emit(err)
            return
        if grammar is not None and self._cands is None:
            self._cands = Candidates(nm.n_vocab)
        p = job.spec.params
        chain = build_chain(p, nm.vocab, nm.num_ctx)
        budget = think_budget(job.spec.thinking, nm.piece, lambda t: nm.tokenize(t, False, True))
        sampler = TokenSampler(chain, grammar, self._cands, exact_subset_k(p), budget)
        slot.seq = Seq(
            job=job,
            sampler=sampler,
            order=next(self._order),
            prompt_done=keep,
            n_past=keep,
            limit=p.num_predict if p.num_predict >= 0 else PREDICT_FACTOR * nm.num_ctx,
            cached=keep,
            text=TextStream(p.stop),
            t_start=time.perf_counter_ns(),
        )

    def step(self) -> None:
        nm = self.nm
        busy = [s for s in self.slots if s.seq is not None]
        rows: list[tuple[Slot, int, int]] = []  # slot, end row (exclusive), output row (-1: none)
        n = 0
        for slot in busy:
            seq = slot.seq
            assert seq is not None
            if seq.pending is not None:
                nm.batch_add(n, seq.pending, seq.n_past, slot.id, True)
                slot.cached.append(seq.pending)
                rows.append((slot, n + 1, n))
                seq.pending, seq.n_past, n = None, seq.n_past + 1, n + 1
        budget = nm.n_batch - n if n == 0 else self._prompt_budget(n)
        prefill = sorted(
            (s for s in busy if s.seq is not None and s.seq.prompt_done < len(s.seq.job.tokens)),
            key=lambda s: s.seq.order if s.seq else 0,
        )
        for slot in prefill:
            seq = slot.seq
            assert seq is not None
            toks = seq.job.tokens
            take = min(budget, len(toks) - seq.prompt_done)
            if take <= 0:
                break
            out = -1
            for i in range(seq.prompt_done, seq.prompt_done + take):
                last = i == len(toks) - 1
                nm.batch_add(n, toks[i], i, slot.id, last)
                out = n if last else out
                n += 1
            slot.cached.extend(toks[seq.prompt_done : seq.prompt_done + take])
            seq.prompt_done += take
            seq.n_past += take
            budget -= take
            rows.append((slot, n, out))
        if n:
            self._decode(rows, n)

    def _prompt_budget(self, n_gen: int) -> int:
        """Prompt tokens to add next to n_gen generating rows (chunked prefill)."""
        room = self.nm.n_batch - n_gen
        if self._tok_cost <= 0:
            return min(room, max(32, self.nm.n_batch // 4))
        return min(room, max(MIN_CHUNK, int(TARGET_STEP_S / self._tok_cost) - n_gen))

    def _decode(self, rows: list[tuple[Slot, int, int]], n: int) -> None:
        """Decodes the batch, halving the view on "no KV slot" (rc 1) as llama-server does."""
        t0 = time.perf_counter()
        metrics.BATCH_TOKENS.observe(n)
        self._decode_views(rows, n)
        if n >= MIN_CHUNK:  # seconds per batch token, fixed costs included (errs towards smaller chunks)
            cost = (time.perf_counter() - t0) / n
            self._tok_cost = cost if self._tok_cost <= 0 else 0.7 * self._tok_cost + 0.3 * cost

    def _decode_views(self, rows: list[tuple[Slot, int, int]], n: int) -> None:
        start, view = 0, n
        while start < n:
            m = min(view, n - start)
            rc = self.nm.decode(m, start)
            if rc == 1 and m > 1:
                view = max(1, m // 2)
                log.warning("llama_decode found no KV slot for %d tokens; retrying with %d", m, view)
                continue
            if rc != 0:
                self._decode_failed([s for s, end, _out in rows if end > start], rc)
                return
            for slot, _end, out in rows:
                if start <= out < start + m and slot.seq is not None:
                    self._sample(slot, out - start)
            start += m

    def _decode_failed(self, failed: list[Slot], rc: int) -> None:
        """Fails the sequences not yet decoded; their KV may be partial, so it goes."""
        log.error("llama_decode failed with %d", rc)
        err = CorralError(common_pb2.ERROR_REASON_RUNNER_FAILED, f"llama_decode failed ({rc})")
        for slot in failed:
            if slot.seq is not None:
                slot.seq.job.emit(err)
                self._release(slot, clear_kv=True)

    def _sample(self, slot: Slot, row: int) -> None:
        nm, seq = self.nm, slot.seq
        assert seq is not None
        if seq.generated >= seq.limit:  # num_predict 0: evaluate the prompt only
            seq.t_first = seq.t_first or time.perf_counter_ns()
            self._finish(slot, common_pb2.DONE_REASON_LENGTH)
            return
        tok = seq.sampler.sample(nm.ctx, row)
        seq.t_first = seq.t_first or time.perf_counter_ns()
        seq.generated += 1
        seq.out_ids.append(tok)
        if seq.job.logprobs:
            seq.out_logprobs.append(position_logprobs(nm, row, tok, seq.job.top_logprobs))
        if nm.is_eog(tok):
            self._finish(slot, common_pb2.DONE_REASON_STOP)
            return
        text = seq.text.feed(nm.piece(tok))
        if seq.text.stopped:
            self._finish(slot, common_pb2.DONE_REASON_STOP, text)
            return
        if text:
            seq.job.emit(GenEvent(text, seq.out_ids, logprobs=seq.out_logprobs))
            seq.out_ids, seq.out_logprobs = [], []
        seq.repeats = seq.repeats + 1 if tok == seq.last_tok else 0
        seq.last_tok = tok
        full = seq.n_past >= nm.num_ctx and not (seq.job.spec.shift and self._shift_context(slot))
        if seq.repeats >= MAX_REPEATS:  # the 31st identical token in a row
            self._finish(slot, common_pb2.DONE_REASON_STOP)
        elif seq.generated >= seq.limit or full:
            self._finish(slot, common_pb2.DONE_REASON_LENGTH)
        else:
            seq.pending = tok

    def _shift_context(self, slot: Slot) -> bool:
        """Drops half of the tokens after num_keep so generation can go on (llama-server's
        context shift). False when the model cannot shift (sliding window, M-RoPE)."""
        seq = slot.seq
        assert seq is not None
        if not self.nm.can_shift:
            return False
        keep = context.keep_count(self.nm, slot.cached, seq.job.spec.params.num_keep)
        seq.n_past = context.shift(self.nm, slot.id, slot.cached, seq.n_past, keep)
        return seq.n_past < self.nm.num_ctx

    def _finish(self, slot: Slot, reason: int, text: str = "") -> None:
        seq = slot.seq
        assert seq is not None
        text += seq.text.flush()
        now = time.perf_counter_ns()
        stats = GenStats(
            prompt_eval_count=len(seq.job.tokens) - seq.cached,
            prompt_eval_duration_ns=max(0, (seq.t_first or now) - seq.t_start),
            eval_count=seq.generated,
            eval_duration_ns=max(0, now - seq.t_first) if seq.generated else 0,
            prompt_cached_count=seq.cached,
        )
        seq.job.emit(GenEvent(text, seq.out_ids, True, reason, stats, seq.out_logprobs))
        metrics.sequence_done(stats)
        self._release(slot, clear_kv=False)

    def _release(self, slot: Slot, clear_kv: bool) -> None:
        """Frees the sequence; its KV stays for prefix reuse unless clear_kv."""
        seq = slot.seq
        if seq is not None:
            self.grammar_rejections += seq.sampler.rejections
            seq.sampler.free()
            slot.seq = None
        if clear_kv:
            self.nm.seq_rm(slot.id)
            slot.cached = []
        slot.last_used = time.monotonic()

    def abort_all(self, err: CorralError) -> None:
        """Fails every running and waiting job (unload, or an unexpected error)."""
        for slot in self.slots:
            if slot.seq is not None:
                slot.seq.job.emit(err)
                self._release(slot, clear_kv=True)
        while self.waiting:
            self.waiting.popleft().emit(err)
