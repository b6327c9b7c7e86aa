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
from typing import TYPE_CHECKING

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner import constraints, context, metrics
from services.runner.context import PROMPT_TOO_LONG
from services.runner.grammar import Candidates, TokenSampler, exact_subset_k, init_grammar, think_budget
from services.runner.jobs import GenerateSpec, GenEvent, GenStats, Job
from services.runner.logprobs import PositionLogprobs, position_logprobs
from services.runner.native import NativeModel
from services.runner.promptcache import MIN_PREFIX, PromptCache, common_prefix
from services.runner.sampling import build_chain
from services.runner.speculate import DraftLength, NgramIndex, StepCosts
from services.runner.textstream import TextStream

if TYPE_CHECKING:
    from services.runner.draftmodel import DraftModel

log = logging.getLogger(__name__)

MAX_REPEATS = 30  # Ollama aborts after more than 30 identical consecutive tokens
PREDICT_FACTOR = 10  # unset num_predict is bounded to 10 x num_ctx
# While sequences generate, a step's prompt chunk is sized so the step takes about this
# long (from the measured cost per batch token), so admitting a long prompt never
# stretches the running streams' inter-token gap much beyond it.
TARGET_STEP_S = 0.2
MIN_CHUNK = 16
MIN_SHARE = 16  # a shared prefix shorter than this is re-evaluated rather than copied
# Idle KV is parked in the host cache only from this many cells on: a snapshot costs a few
# milliseconds (tens with a transposed V cache, flash attention off), and attention runs
# over cells in blocks of 256, so a few hundred idle cells cost the running steps less than
# saving them does (8 streams of 64 tokens, all ending together: parking every time cost 5 %).
PARK_MIN_CELLS = 1024


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
    n_ctx: int  # this sequence's context (Batcher.seq_ctx)
    t_start: int
    pending: int | None = None  # sampled, not yet decoded
    generated: int = 0
    out_ids: list[int] = field(default_factory=list)
    last_tok: int = -1
    repeats: int = 0
    t_first: int = 0
    out_logprobs: list[PositionLogprobs] = field(default_factory=list)
    # Speculative decoding: whether it drafts, the history's n-grams (without a draft
    # model), the adaptive draft length, and the tokens drafted in the current step
    # (decoded right after `pending`).
    speculate: bool = False
    ngrams: NgramIndex | None = None
    draft_len: DraftLength = field(default_factory=DraftLength)
    draft: list[int] = field(default_factory=list)
    # Waiting for another sequence to evaluate a shared prompt prefix: (donor, donor's
    # job, prefix length); the prefix is then copied instead of evaluated again.
    follow: tuple[Slot, Job, int] | None = None


@dataclass
class Slot:
    id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    seq: Seq | None = None
    last_used: float = 0.0


class Batcher:
    def __init__(
        self, nm: NativeModel, cache: PromptCache | None = None, owner: str = "", drafter: DraftModel | None = None
    ) -> None:
        """`cache` keeps prompt KV snapshots across requests under `owner`, this load's identity;
        `drafter` proposes speculative tokens instead of the prompt-lookup index."""
        self.nm = nm
        self.drafter = drafter
        self.cache = cache if cache is not None and cache.enabled else None
        self.owner = owner
        self.shared_tokens = 0  # prompt tokens copied from another sequence or the cache (tests read it)
        self.drafted = 0
        self.draft_accepted = 0
        self.step_costs = StepCosts()
        self.slots = [Slot(i) for i in range(nm.num_parallel)]
        self.waiting: deque[Job] = deque()
        self._order = itertools.count()
        self._cands = Candidates(nm.n_vocab)  # the sequences' candidate arrays (owner thread only)
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
        if any(t < 0 or t >= nm.n_vocab for t, _ in spec.params.logit_bias):
            raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "logit_bias token id out of range")
        n_ctx = self.seq_ctx(spec)
        if len(toks) >= n_ctx:
            if not spec.truncate:
                raise CorralError(common_pb2.ERROR_REASON_PROMPT_TOO_LONG, PROMPT_TOO_LONG)
            toks = context.truncate_prompt(toks, n_ctx, context.keep_count(nm, n_ctx, toks, spec.params.num_keep))
        return toks

    def seq_ctx(self, spec: GenerateSpec) -> int:
        """The sequence's context: the request's num_ctx where it is shorter than the
        instance's (the scheduler leases an instance with a longer context too)."""
        return spec.num_ctx if 0 < spec.num_ctx < self.nm.num_ctx else self.nm.num_ctx

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
            # The longest usable common prefix wins; without one an empty slot, then the least
            # recently used.
            slot = max(free, key=lambda s: (self._own_prefix(s, job.tokens), not s.cached, -s.last_used))
            self._start(slot, job)

    @staticmethod
    def _own_prefix(slot: Slot, toks: list[int]) -> int:
        """How much of a slot's cached KV a prompt may keep: a short match (a BOS, a role
        marker) of a different prompt is evaluated again instead, so that the sequence does
        not keep a cell where the slot's old KV was, possibly high in a unified cache, where
        it would widen every step's attention (llama.cpp attends over all cells up to the
        highest one in use). A short prompt sent again keeps its KV."""
        n = common_prefix(slot.cached, toks)
        return n if n >= MIN_SHARE or n >= len(toks) - 1 else 0

    def _start(self, slot: Slot, job: Job) -> None:
        grammar = None
        try:
            if job.grammar:
                grammar = init_grammar(self.nm.vocab, job.grammar)
        except CorralError as err:
            job.emit(err)
            return
        nm = self.nm
        keep, follow = self._reuse_prefix(slot, job.tokens)
        p = job.spec.params
        n_ctx = self.seq_ctx(job.spec)
        chain = build_chain(p, nm.vocab, n_ctx)
        budget = think_budget(job.spec.thinking, nm.piece, lambda t: nm.tokenize(t, False, True))
        sampler = TokenSampler(chain, grammar, self._cands, exact_subset_k(p), budget)
        seq = Seq(
            job=job,
            sampler=sampler,
            order=next(self._order),
            prompt_done=keep,
            n_past=keep,
            limit=p.num_predict if p.num_predict >= 0 else PREDICT_FACTOR * n_ctx,
            n_ctx=n_ctx,
            cached=keep,
            text=TextStream(p.stop),
            t_start=time.perf_counter_ns(),
            follow=follow,
        )
        # On by default where it keeps the output exact, or where the model comes with a draft
        # model (as in Ollama); a request may turn it on or off.
        seq.speculate = p.speculative if p.speculative is not None else nm.batch_invariant or self.drafter is not None
        if seq.speculate and self.drafter is None:
            seq.ngrams = NgramIndex()
            seq.ngrams.extend(job.tokens)
        slot.seq = seq
        self._park_idle()

    def _park_idle(self) -> None:
        """Moves the KV of idle slots to the host cache and out of a unified KV cache when a
        sequence starts, as llama-server's --cache-idle-slots does. Attention spans every
        cell up to the highest one in use, whichever sequence owns it, so KV left behind by
        finished requests slows every later step: a 1,500-token prompt took 2.7 s instead of
        1.8 s after a few streams had finished, and one stream decoded at 60 instead of 98
        tok/s next to 7 idle slots of 900 tokens (Gemma 3 270M). A parked prefix comes back
        from the cache when a request extends it. Only from PARK_MIN_CELLS idle cells on;
        not with one KV stream per sequence (batch-invariant kernels), whose attention spans
        its own cells only, nor without a host cache. Parking also when a sequence ends
        while others run was tried: the single stream above then decoded at 80 tok/s, not
        98 (the others' prompts were still being evaluated into the cells it freed)."""
        if self.cache is None or self.nm.batch_invariant:
            return
        donors = {s.seq.follow[0].id for s in self.slots if s.seq is not None and s.seq.follow is not None}
        idle = [s for s in self.slots if s.seq is None and s.cached and s.id not in donors]
        if sum(len(s.cached) for s in idle) < PARK_MIN_CELLS:
            return
        for slot in idle:
            self._evict(slot, 0)

    # --- prefix sharing ---

    def _window_ok(self, seq_id: int, keep: int) -> bool:
        """With a sliding window (swa_full off), the window layers hold only the newest
        n_swa positions: a prefix of `keep` tokens is usable only if they still hold what
        position `keep` attends to (llama-server's check)."""
        return self.nm.n_swa <= 0 or self.nm.seq_pos_min(seq_id) <= max(0, keep - self.nm.n_swa)

    def _reuse_prefix(self, slot: Slot, toks: list[int]) -> tuple[int, tuple[Slot, Job, int] | None]:
        """Puts the longest usable KV prefix of `toks` into the slot's sequence: its own
        cached tokens, another sequence's (llama_memory_seq_cp) or a host cache snapshot.
        Returns the tokens kept, and a sequence still evaluating a longer shared prefix to
        wait for. At least the last prompt token is always evaluated (its logits)."""
        nm, limit = self.nm, len(toks) - 1
        own = min(self._own_prefix(slot, toks), limit)
        if own > 0 and not self._window_ok(slot.id, own):
            own = 0
        best, donor = own, None
        for other in self.slots:
            if other is slot:
                continue
            n = min(common_prefix(other.cached, toks), limit)
            if n >= best + MIN_SHARE and self._window_ok(other.id, n):
                best, donor = n, other
        entry = None
        if self.cache is not None:
            hit = self.cache.lookup(self.owner, toks, at_least=max(best + MIN_SHARE, MIN_PREFIX) - 1)
            # A snapshot's window layers hold its last n_swa positions only: with a sliding
            # window it serves a prompt that extends it whole (or one shorter than the window).
            if hit is not None and (nm.n_swa <= 0 or hit[1] >= len(hit[0].tokens) or len(hit[0].tokens) <= nm.n_swa):
                entry, best, donor = hit[0], min(hit[1], limit), None
        follow = None
        for other in self.slots:  # a sequence now evaluating a longer prefix of this prompt
            o = other.seq
            # Not a follower itself: its copy is a snapshot whose window may already be past
            # this prompt's shorter prefix. Its own donor is a candidate in this loop anyway.
            if other is slot or o is None or o.follow is not None or o.prompt_done >= len(o.job.tokens):
                continue
            n = min(common_prefix(o.job.tokens, toks), limit)
            if n >= max(best, o.prompt_done) + MIN_SHARE:
                follow = (other, o.job, n)
                best = n
        if follow is not None:
            self._evict(slot, 0)
            return 0, follow
        if donor is None and entry is None:
            self._evict(slot, own)
            return own, None
        self._evict(slot, 0)
        if donor is not None:
            if not nm.seq_cp(donor.id, slot.id, best):
                slot.cached = []
                return 0, None
        else:
            assert entry is not None
            if not nm.state_seq_set(slot.id, entry.data):
                nm.seq_rm(slot.id)
                slot.cached = []
                return 0, None
            nm.seq_rm(slot.id, best)
            if not self._window_ok(slot.id, best):
                nm.seq_rm(slot.id)
                return 0, None
        slot.cached = toks[:best]
        self.shared_tokens += best
        return best, None

    def _evict(self, slot: Slot, keep: int) -> None:
        """Drops the slot's KV after `keep` tokens, first saving what is lost to the host
        cache (llama-server saves a slot's prompt before overwriting it)."""
        if keep >= len(slot.cached):
            return
        if self.cache is not None and len(slot.cached) - keep >= MIN_PREFIX:
            self._save(slot.id, slot.cached)
        if keep == 0 or not self.nm.seq_rm(slot.id, keep):
            self.nm.seq_rm(slot.id)
            keep = 0
        slot.cached = slot.cached[:keep]

    def _save(self, seq_id: int, tokens: list[int]) -> None:
        assert self.cache is not None
        data = self.nm.state_seq_get(seq_id, self.cache.budget)
        if data is not None:
            self.cache.put(self.owner, tokens, data, prefixes_serve=self.nm.n_swa <= 0)

    def _resolve_follow(self, slot: Slot) -> bool:
        """For a sequence waiting on a donor: copies the shared prefix once the donor has
        evaluated it. False while it must still wait."""
        seq = slot.seq
        assert seq is not None and seq.follow is not None
        donor, job, n = seq.follow
        d = donor.seq
        if d is not None and d.job is job and d.prompt_done < n:
            return False  # still on its way to the boundary
        seq.follow = None
        toks = seq.job.tokens
        if common_prefix(donor.cached, toks) >= n and self._window_ok(donor.id, n):
            self.nm.seq_rm(slot.id)
            if not self.nm.seq_cp(donor.id, slot.id, n):
                slot.cached = []
                return True  # evaluates its whole prompt instead
            slot.cached = toks[:n]
            seq.prompt_done = seq.n_past = seq.cached = n
            self.shared_tokens += n
            if self.cache is not None:  # the shared prefix alone, exactly: what the next request needs
                self._save(slot.id, toks[:n])
        return True

    def step(self) -> None:
        nm = self.nm
        busy = [s for s in self.slots if s.seq is not None]
        for slot in busy:  # before this step adds anything: donors' KV is what was decoded
            if slot.seq is not None and slot.seq.follow is not None:
                self._resolve_follow(slot)
        rows: list[tuple[Slot, int, int]] = []  # slot, end row (exclusive), output row (-1: none)
        n = 0
        drafts = self._drafts(busy)
        for slot in busy:
            seq = slot.seq
            assert seq is not None
            if seq.pending is not None:
                draft = drafts.get(slot.id, [])
                nm.batch_add(n, seq.pending, seq.n_past, slot.id, True)
                for j, tok in enumerate(draft):
                    nm.batch_add(n + 1 + j, tok, seq.n_past + 1 + j, slot.id, True)
                slot.cached.append(seq.pending)
                seq.draft = draft
                rows.append((slot, n + 1 + len(draft), n))
                seq.pending, seq.n_past, n = None, seq.n_past + 1, n + 1 + len(draft)
        n_outputs = n
        budget = nm.n_batch - n if n == 0 else self._prompt_budget(n)
        prefill = sorted(
            (s for s in busy if s.seq is not None and s.seq.prompt_done < len(s.seq.job.tokens)),
            key=lambda s: s.seq.order if s.seq else 0,
        )
        # Where donors must pause next so each follower can copy exactly its shared prefix
        # (a donor past a follower's boundary may hold a window that no longer serves it).
        stops: dict[int, int] = {}
        for slot in prefill:
            seq = slot.seq
            assert seq is not None
            if seq.follow is not None:
                donor, job, at = seq.follow
                if donor.seq is not None and donor.seq.job is job and at > donor.seq.prompt_done:
                    stops[donor.id] = min(stops.get(donor.id, at), at)
        for slot in prefill:
            seq = slot.seq
            assert seq is not None
            if seq.follow is not None:  # its donor has not evaluated the shared prefix yet
                continue
            toks = seq.job.tokens
            end = stops.get(slot.id, len(toks))
            take = min(budget, end - seq.prompt_done)
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
            seconds = self._decode(rows, n)
            if n == n_outputs:  # generation and verification only: what a draft length choice weighs
                self.step_costs.observe(n, seconds)

    def _drafts(self, busy: list[Slot]) -> dict[int, list[int]]:
        """Each generating slot's speculative tokens after its `pending` one, within the step's
        output rows and batch: from its own history (prompt lookup), or from the draft model,
        which proposes for all of them at once."""
        outputs = self.nm.n_outputs_max - len(busy)  # output rows left for drafted tokens
        n = 0  # rows taken so far
        generating = sum(1 for s in busy if s.seq is not None and s.seq.pending is not None)
        extra = 0  # drafted rows so far
        out: dict[int, list[int]] = {}
        wanted: dict[int, tuple[list[int], int]] = {}
        for slot in busy:
            seq = slot.seq
            if seq is None or seq.pending is None:
                continue
            k = self._draft_k(seq, min(outputs, self.nm.n_batch - len(busy) - n))
            rows = generating + extra  # output rows of the step if this one drafts nothing
            if self.drafter is not None:
                k = seq.draft_len.worth(self.step_costs, rows, k)
                if k > 0:
                    wanted[slot.id] = ([*slot.cached, seq.pending], k)
            else:
                draft = seq.ngrams.draft(k) if k > 0 and seq.ngrams is not None else []
                out[slot.id] = draft[: seq.draft_len.worth(self.step_costs, rows, len(draft))]
                k = len(out[slot.id])
            outputs -= k
            extra += k
            n += 1 + k
        if wanted and self.drafter is not None:
            out.update(self.drafter.propose_many(wanted))
        return out

    def _draft_k(self, seq: Seq, room: int) -> int:
        """How many tokens a sequence may draft this step (0: none)."""
        if not seq.speculate or room <= 0:
            return 0
        k = min(seq.draft_len.next_k(), room, seq.limit - seq.generated - 1, seq.n_ctx - seq.n_past - 2)
        return max(0, k)

    def _prompt_budget(self, n_gen: int) -> int:
        """Prompt tokens to add next to n_gen generating rows (chunked prefill)."""
        room = self.nm.n_batch - n_gen
        if self._tok_cost <= 0:
            return min(room, max(32, self.nm.n_batch // 4))
        return min(room, max(MIN_CHUNK, int(TARGET_STEP_S / self._tok_cost) - n_gen))

    def _decode(self, rows: list[tuple[Slot, int, int]], n: int) -> float:
        """Decodes the batch, halving the view on "no KV slot" (rc 1) as llama-server does;
        returns the seconds it took."""
        t0 = time.perf_counter()
        metrics.BATCH_TOKENS.observe(n)
        self._decode_views(rows, n)
        seconds = time.perf_counter() - t0
        if n >= MIN_CHUNK:  # seconds per batch token, fixed costs included (errs towards smaller chunks)
            cost = seconds / n
            self._tok_cost = cost if self._tok_cost <= 0 else 0.7 * self._tok_cost + 0.3 * cost
        return seconds

    def _decode_views(self, rows: list[tuple[Slot, int, int]], n: int) -> None:
        start, view = 0, n
        while start < n:
            m = self._cut(rows, start, min(view, n - start))
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
                    if slot.seq.draft:
                        self._verify(slot, out - start)
                    else:
                        self._sample(slot, out - start)
            start += m

    @staticmethod
    def _cut(rows: list[tuple[Slot, int, int]], start: int, m: int) -> int:
        """Shrinks a view [start, start + m) so that it does not split a sequence's pending
        token from its drafted tokens (they are verified together); at least one span."""
        for slot, end, out in rows:
            if start <= out < start + m < end and slot.seq is not None and slot.seq.draft:
                return out - start if out > start else end - start
        return m

    def _decode_failed(self, failed: list[Slot], rc: int) -> None:
        """Fails the sequences not yet decoded; their KV may be partial, so it goes."""
        log.error("llama_decode failed with %d", rc)
        err = CorralError(common_pb2.ERROR_REASON_RUNNER_FAILED, f"llama_decode failed ({rc})")
        for slot in failed:
            if slot.seq is not None:
                slot.seq.job.emit(err)
                self._release(slot, clear_kv=True)

    def _verify(self, slot: Slot, row: int) -> None:
        """Samples the rows of the pending token and its draft in order and keeps the drafted
        tokens the sampler itself picks. Each row is sampled exactly as without a draft (same
        chain, same logits given the same prefix, one draw per token), so the output is the
        one plain decoding gives, greedy or sampled; rejected tokens leave the KV."""
        seq = slot.seq
        assert seq is not None
        draft, seq.draft = seq.draft, []
        base = seq.n_past  # position of draft[0]
        accepted = 0
        for j in range(len(draft) + 1):
            self._sample(slot, row + j)
            if slot.seq is not seq or j == len(draft) or seq.pending != draft[j]:
                break
            slot.cached.append(draft[j])  # its KV is in place: it becomes part of the sequence
            seq.pending = None
            seq.n_past += 1
            accepted += 1
        self.nm.seq_rm(slot.id, base + accepted)
        seq.draft_len.update(len(draft), accepted)
        self.drafted += len(draft)
        self.draft_accepted += accepted
        source = "lookup" if self.drafter is None else "model"
        metrics.DRAFT_TOKENS.labels(source, "accepted").inc(accepted)
        metrics.DRAFT_TOKENS.labels(source, "rejected").inc(len(draft) - accepted)

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
        full = seq.n_past >= seq.n_ctx and not (seq.job.spec.shift and self._shift_context(slot))
        if seq.repeats >= MAX_REPEATS:  # the 31st identical token in a row
            self._finish(slot, common_pb2.DONE_REASON_STOP)
        elif seq.generated >= seq.limit or full:
            self._finish(slot, common_pb2.DONE_REASON_LENGTH)
        else:
            seq.pending = tok
            if seq.ngrams is not None:
                seq.ngrams.extend([tok])

    def _shift_context(self, slot: Slot) -> bool:
        """Drops half of the tokens after num_keep so generation can go on (llama-server's
        context shift). False when the model cannot shift (sliding window, M-RoPE)."""
        seq = slot.seq
        assert seq is not None
        if not self.nm.can_shift:
            return False
        keep = context.keep_count(self.nm, seq.n_ctx, slot.cached, seq.job.spec.params.num_keep)
        seq.n_past = context.shift(self.nm, slot.id, slot.cached, seq.n_past, keep)
        return seq.n_past < seq.n_ctx

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
