"""Prompt-lookup drafting and the prompt cache's bookkeeping (pure Python, no llama.cpp)."""

from __future__ import annotations

import pytest

from corral.errors import CorralError
from services.runner.promptcache import PromptCache, common_prefix
from services.runner.speculate import MAX_DRAFT, MISS_PAUSE, DraftLength, NgramIndex, StepCosts


def test_draft_continues_the_newest_earlier_occurrence() -> None:
    idx = NgramIndex((3, 2))
    idx.extend([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3])
    assert idx.draft(2) == [7, 8]  # the newest earlier "1 2 3" was followed by 7 8
    assert idx.draft(10) == [7, 8, 1, 2, 3]  # up to the end of the history
    assert idx.draft(0) == []


def test_longest_ngram_wins_and_short_matches_fall_back() -> None:
    idx = NgramIndex((3, 2))
    idx.extend([5, 6, 10, 4, 6, 20, 5, 6])
    assert idx.draft(1) == [10]  # "5 6" matches as a 2-gram (no earlier 3-gram)
    idx = NgramIndex((3, 2))
    idx.extend([4, 5, 6, 10, 9, 5, 6, 20, 4, 5, 6])
    assert idx.draft(1) == [10]  # the 3-gram "4 5 6" beats the newer 2-gram "5 6" -> 20


def test_by_default_a_match_needs_four_tokens_and_the_longest_wins() -> None:
    idx = NgramIndex()
    idx.extend([1, 2, 3, 10, 9, 1, 2, 3])
    assert idx.draft(4) == []  # a 3-token match is chance
    idx.extend([11, 1, 2, 3, 11])
    assert idx.draft(2) == [1, 2]  # "2 3 11" ... "1 2 3 11" was followed by 1 2
    history = [7, 1, 2, 3, 4, 5, 6, 7, 8, 40, 0, 5, 6, 7, 8, 50, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    idx = NgramIndex()
    idx.extend(history)
    assert idx.draft(1) == [40]  # the 8-gram match beats the newer 4-gram "5 6 7 8" -> 50


def test_no_match_and_no_self_match() -> None:
    idx = NgramIndex()
    idx.extend([1, 2, 3, 4])
    assert idx.draft(4) == []  # the suffix itself is not an earlier occurrence
    idx.extend([5])
    assert idx.draft(4) == []


def test_incremental_extend_equals_one_extend() -> None:
    toks = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 1, 4, 1, 5]
    a, b = NgramIndex(), NgramIndex()
    a.extend(toks)
    for t in toks:
        b.extend([t])
    assert a.draft(5) == b.draft(5) == [9, 2, 6, 5, 3]


def test_draft_length_grows_on_full_acceptance_and_pauses_after_a_miss() -> None:
    d = DraftLength(start=4)
    d.update(4, 4)
    assert d.next_k() == 8
    for _ in range(5):
        d.update(d.k, d.k)
    assert d.k == MAX_DRAFT
    d.update(MAX_DRAFT, 2)
    assert d.next_k() == 3  # accepted + 1
    d.update(3, 0)
    assert [d.next_k() for _ in range(MISS_PAUSE)] == [0] * MISS_PAUSE
    assert d.next_k() == 1
    assert (d.proposed, d.accepted) == (4 + 8 + 4 * MAX_DRAFT + MAX_DRAFT + 3, 4 + 8 + 4 * MAX_DRAFT + 2)


def test_a_draft_too_short_for_its_rows_grows_by_one() -> None:
    d = DraftLength(start=1)
    d.too_short()
    assert d.next_k() == 2
    for _ in range(2 * MAX_DRAFT):
        d.too_short()
    assert d.k == MAX_DRAFT


def test_step_costs_pick_the_draft_length_with_the_most_tokens_per_second() -> None:
    c = StepCosts()
    assert c.best_extra(1, 5) == 5  # nothing measured yet: the whole draft
    for rows, ms in {1: 10, 2: 22, 3: 28, 4: 31, 5: 47, 8: 41, 9: 52, 16: 56}.items():
        c.observe(rows, ms / 1e3)
    assert c.best_extra(1, 1) == 0  # 2 rows cost more than two single-row steps
    assert c.best_extra(1, 5) == 3  # 4 rows beat 5, and 6 (not seen: taken to cost what 5 does)
    assert c.best_extra(1, 8) == 7  # 8 rows beat 9
    assert c.best_extra(1, 15) == 14  # 15 rows not seen: taken to cost what 9 do
    assert c.best_extra(1, 16) == 16  # 17 rows not seen yet: tried
    assert c.best_extra(1, 16, accept_rate=0.1) == 0  # drafts rarely accepted: no rows are worth it
    assert c.best_extra(4, 4) == 4  # 8 rows cost 1.3 times 4 rows
    assert c.best_extra(1, 0) == 0
    c.observe(1, 0.02)
    assert c.seconds[1] == pytest.approx(0.013)  # an EMA: one slow step moves it by alpha


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_cache_lookup_picks_the_longest_prefix_of_its_owner() -> None:
    c = PromptCache(1 << 20)
    c.put("a", list(range(100)), b"x" * 10)
    c.put("a", list(range(50)) + [7] * 60, b"y" * 10, prefixes_serve=False)
    hit = c.lookup("a", [*range(80), 1, 2], at_least=10)
    assert hit is not None and hit[1] == 80 and hit[0].data == b"x" * 10
    assert c.lookup("b", list(range(80)), at_least=10) is None  # another load never sees it
    assert c.lookup("a", [9, 9, 9], at_least=0) is None


def test_cache_stays_within_its_budget_evicting_least_recently_used() -> None:
    c = PromptCache(3000)
    for i in range(5):
        assert c.put("a", [i] * 10, bytes(900))  # 900 + 80 bytes each
    assert len(c) == 3 and c.used <= 3000
    assert c.lookup("a", [0] * 10, at_least=5) is None  # the oldest went first
    assert c.lookup("a", [2] * 10, at_least=5) is not None  # now most recently used
    c.put("a", [9] * 10, bytes(900))
    assert c.lookup("a", [2] * 10, at_least=5) is not None
    assert c.lookup("a", [3] * 10, at_least=5) is None
    assert not c.put("a", [1], bytes(5000))  # larger than the whole budget
    assert not PromptCache(0).enabled


def test_cache_supersedes_prefixes_only_without_a_sliding_window() -> None:
    c = PromptCache(1 << 20)
    c.put("a", [1, 2, 3], b"s")
    c.put("a", [1, 2, 3, 4, 5], b"l")
    assert len(c) == 1  # the longer snapshot serves both
    c.put("a", [1, 2, 3], b"s")
    assert len(c) == 1  # covered by the longer one
    c.put("a", [1, 2, 3], b"s", prefixes_serve=False)
    assert len(c) == 2  # with a window, a snapshot serves only its own end
    c.drop_owner("a")
    assert len(c) == 0 and c.used == 0


def test_the_speculative_option_reaches_the_sampling_params() -> None:
    from services.gateway.options import to_sampling
    from services.runner.sampling import SamplingParams

    assert SamplingParams.from_proto(to_sampling({})).speculative is None  # the runner decides (docs/runner.md)
    assert SamplingParams.from_proto(to_sampling({"speculative": True})).speculative is True
    assert SamplingParams.from_proto(to_sampling({"speculative": False})).speculative is False
    with pytest.raises(CorralError):
        to_sampling({"speculative": "no"})
