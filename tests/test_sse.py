"""The incremental SSE parser: chunking never changes what comes out, and raw bytes add up."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.providers.sse import SseEvent, SseParser

ENDINGS = (b"\n", b"\r\n", b"\r")

# Field values: any text without line breaks (the parser works on bytes, so multi-byte UTF-8 is fine).
_value = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
_name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n:"), min_size=1, max_size=8)


@dataclass(frozen=True)
class Line:
    kind: str  # data | event | comment | id | bare_data
    value: str
    space: bool  # "field: value" or "field:value"

    def encode(self) -> bytes:
        v = self.value.encode()
        if self.kind == "comment":
            return b":" + v
        if self.kind == "bare_data":
            return b"data"
        field = b"data" if self.kind == "data" else self.kind.encode()
        return field + (b": " if self.space else b":") + v

    def parsed_value(self) -> str:
        """What a conforming parser reads: one leading space after the colon is dropped."""
        if self.kind == "bare_data":
            return ""
        if not self.space and self.value.startswith(" "):
            return self.value[1:]
        return self.value


_line = st.builds(
    Line,
    kind=st.sampled_from(["data", "data", "data", "event", "comment", "id", "bare_data"]),
    value=_value,
    space=st.booleans(),
)


@dataclass(frozen=True)
class Block:
    lines: tuple[Line, ...]
    ending: bytes

    def encode(self, complete: bool = True) -> bytes:
        body = b"".join(line.encode() + self.ending for line in self.lines)
        return body + self.ending if complete else body

    def expected(self) -> tuple[str, bytes]:
        event = ""
        data: list[str] = []
        for line in self.lines:
            if line.kind in ("data", "bare_data"):
                data.append(line.parsed_value())
            elif line.kind == "event":
                event = line.parsed_value()
        return event, "\n".join(data).encode()


_block = st.builds(Block, lines=st.lists(_line, min_size=1, max_size=5).map(tuple), ending=st.sampled_from(ENDINGS))


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Block], bytes, bytes]:
    """Complete events, then an incomplete tail (possibly empty, possibly cut mid-line)."""
    blocks = draw(st.lists(_block, max_size=8))
    tail_block = draw(_block)
    tail_full = tail_block.encode(complete=False)
    tail = tail_full[: draw(st.integers(0, len(tail_full)))]
    return blocks, b"".join(b.encode() for b in blocks), tail


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (modulo its length): how a network may deliver a stream."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[prev:p])
        prev = p
    return pieces


def feed_all(chunks: list[bytes]) -> tuple[list[SseEvent], SseParser]:
    parser = SseParser()
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser


@settings(max_examples=200, deadline=None)
@given(streams(), st.lists(st.integers(min_value=0), max_size=12))
def test_chunking_does_not_change_events(stream: tuple[list[Block], bytes, bytes], cuts: list[int]) -> None:
    blocks, complete, tail = stream
    whole = complete + tail

    events, parser = feed_all([whole])
    assert [(e.event, e.data) for e in events] == [b.expected() for b in blocks]
    assert b"".join(e.raw for e in events) == complete
    assert parser.pending == tail

    chunked, parser2 = feed_all(split(whole, cuts))
    assert [(e.event, e.data, e.raw) for e in chunked] == [(e.event, e.data, e.raw) for e in events]
    assert parser2.pending == tail


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_chunking_invariant(data: bytes, cuts: list[int]) -> None:
    """Even garbage: the same events, and raw + pending always account for every byte."""
    events, parser = feed_all([data])
    chunked, parser2 = feed_all(split(data, cuts))
    assert chunked == events
    assert parser2.pending == parser.pending
    assert b"".join(e.raw for e in events) + parser.pending == data


@pytest.mark.parametrize(
    ("raw", "event", "data"),
    [
        (b'data: {"url":"https://x.example/a:b"}\n\n', "", b'{"url":"https://x.example/a:b"}'),
        (b"data:no-space\n\n", "", b"no-space"),
        (b"data:  two-spaces\n\n", "", b" two-spaces"),
        (b"data: [DONE]\n\n", "", b"[DONE]"),
        (b"event: message_start\ndata: {}\n\n", "message_start", b"{}"),
        (b"event:ping\r\ndata: a\r\ndata: b\r\n\r\n", "ping", b"a\nb"),
        (b": keep-alive\n\n", "", b""),
        (b"data: x\r\rdata: y\r\r", "", b"x"),
        (b"data\n\n", "", b""),
        (b"id: 7\nretry: 100\ndata: z\n\n", "", b"z"),
    ],
)
def test_table(raw: bytes, event: str, data: bytes) -> None:
    events = SseParser().feed(raw)
    assert (events[0].event, events[0].data) == (event, data)
    assert events[0].raw == raw[: len(events[0].raw)]


def test_done_then_incomplete_tail_is_pending() -> None:
    parser = SseParser()
    events = parser.feed(b"data: [DONE]\n\ndata: {\"partial")
    assert [e.data for e in events] == [b"[DONE]"]
    assert parser.pending == b'data: {"partial'
    assert [e.data for e in parser.feed(b'":1}\n\n')] == [b'{"partial":1}']
    assert parser.pending == b""


def test_crlf_split_between_cr_and_lf() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r\n\r") == []
    events = parser.feed(b"\ndata: b\r\n\r\n")
    assert [(e.data, e.raw) for e in events] == [(b"a", b"data: a\r\n\r\n"), (b"b", b"data: b\r\n\r\n")]
