from __future__ import annotations

from services.runner.textstream import TextStream


def feed_all(ts: TextStream, pieces: list[bytes]) -> list[str]:
    return [ts.feed(p) for p in pieces]


def test_plain_text_passes_through() -> None:
    ts = TextStream()
    assert feed_all(ts, [b"Hello", b" world"]) == ["Hello", " world"]
    assert ts.flush() == ""


def test_incomplete_utf8_is_held_back() -> None:
    smile = "🙂".encode()
    ts = TextStream()
    assert ts.feed(b"a" + smile[:2]) == "a"
    assert ts.feed(smile[2:]) == "🙂"


def test_stop_string_is_cut_and_not_emitted() -> None:
    ts = TextStream(["STOP"])
    out = feed_all(ts, [b"abc S", b"TO", b"P def"])
    assert "".join(out) == "abc "
    assert ts.stopped
    assert ts.feed(b"more") == ""
    assert ts.flush() == ""


def test_prefix_of_stop_is_held_until_disambiguated() -> None:
    ts = TextStream(["</end>"])
    assert ts.feed(b"x </e") == "x "
    assert ts.feed(b"nvelope") == "</envelope"
    assert not ts.stopped


def test_held_prefix_is_flushed_at_the_end() -> None:
    ts = TextStream(["###"])
    assert ts.feed(b"done ##") == "done "
    assert ts.flush() == "##"


def test_earliest_of_several_stops_wins() -> None:
    ts = TextStream(["world", "lo w"])
    assert ts.feed(b"hello world") == "hel"
    assert ts.stopped


def test_invalid_bytes_become_replacement_characters() -> None:
    ts = TextStream()
    assert ts.feed(b"a\xffb") == "a\ufffdb"
