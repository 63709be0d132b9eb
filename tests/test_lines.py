"""The line splitter, without sockets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telchat.rules.lines import LineSplitter, Overflow, Oversize


def feed_all(splitter: LineSplitter, *chunks: bytes) -> list[bytes | Oversize]:
    out: list[bytes | Oversize] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    return out


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r\x00", b"\r"])
def test_terminators(eol: bytes) -> None:
    assert feed_all(LineSplitter(), b"one" + eol + b"two" + eol) == [b"one", b"two"]


def test_crlf_split_across_reads_is_one_terminator() -> None:
    assert feed_all(LineSplitter(), b"one\r", b"\ntwo\r", b"\x00three\n") == [b"one", b"two", b"three"]


def test_lone_cr_then_text() -> None:
    assert feed_all(LineSplitter(), b"one\r", b"two\n") == [b"one", b"two"]


def test_empty_lines_are_kept() -> None:
    assert feed_all(LineSplitter(), b"\r\n\n") == [b"", b""]


def test_byte_at_a_time() -> None:
    data = b"hello\r\nworld\n"
    assert feed_all(LineSplitter(), *(data[i : i + 1] for i in range(len(data)))) == [b"hello", b"world"]


def test_oversize_line_is_reported_not_kept() -> None:
    splitter = LineSplitter(max_line=10, max_unterminated=100)
    assert feed_all(splitter, b"x" * 11 + b"\nok\n") == [Oversize(11), b"ok"]


def test_oversize_across_chunks_keeps_no_bytes() -> None:
    splitter = LineSplitter(max_line=10, max_unterminated=100)
    splitter.feed(b"x" * 30)
    assert splitter.pending == 30
    assert splitter._buf == b""
    assert feed_all(splitter, b"y" * 5, b"\n") == [Oversize(35)]


def test_overflow_without_newline() -> None:
    splitter = LineSplitter(max_line=10, max_unterminated=100)
    splitter.feed(b"x" * 100)
    with pytest.raises(Overflow):
        splitter.feed(b"x")


def test_overflow_even_when_terminated_in_same_chunk() -> None:
    with pytest.raises(Overflow):
        LineSplitter(max_line=10, max_unterminated=100).feed(b"x" * 101 + b"\n")


@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
    eol=st.sampled_from([b"\r\n", b"\n", b"\r\x00"]),
)
def test_any_chunking_gives_same_lines(lines: list[bytes], cuts: list[int], eol: bytes) -> None:
    data = b"".join(line + eol for line in lines)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    splitter = LineSplitter(max_line=30, max_unterminated=64)
    got = feed_all(splitter, *chunks)
    want = [line if len(line) <= 30 else Oversize(len(line)) for line in lines]
    assert got == want
    assert splitter.pending == 0
    assert all(isinstance(x, Oversize) or len(x) <= 30 for x in got)


def reference(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole stream split at once: complete lines, and the unterminated tail."""
    *lines, tail = re.split(rb"\r\n|\r\x00|\r|\n", data)
    return lines, tail


MAX_LINE, MAX_UNTERMINATED = 16, 48
stream = st.lists(
    st.one_of(
        st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\x00", b"\x00", b"\xff"]),
        st.binary(max_size=70),
    ),
    max_size=25,
).map(b"".join)


@given(data=stream, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=40))
def test_any_stream_any_chunking_matches_splitting_it_whole(data: bytes, cuts: list[int]) -> None:
    """No line over the limit, no byte lost or invented, wherever the reads happen to split."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    splitter = LineSplitter(MAX_LINE, MAX_UNTERMINATED)
    got: list[bytes | Oversize] = []
    overflowed = False
    try:
        for chunk in chunks:
            got.extend(splitter.feed(chunk))
    except Overflow:
        overflowed = True
    lines, tail = reference(data)
    want = [line if len(line) <= MAX_LINE else Oversize(len(line)) for line in lines]
    assert all(isinstance(x, Oversize) or len(x) <= MAX_LINE for x in got)
    if any(len(line) > MAX_UNTERMINATED for line in lines) or len(tail) > MAX_UNTERMINATED:
        # Stopped at the first line too long to wait for; what came before it is intact.
        assert overflowed
        assert got == want[: len(got)]
    else:
        assert not overflowed
        assert got == want
        assert splitter.pending == len(tail)
        if len(tail) <= MAX_LINE:
            assert splitter._buf == tail
