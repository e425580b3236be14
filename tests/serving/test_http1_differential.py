"""The HTTP/1.1 protocol on llhttp (serving/hazmat/llhttp_h1.py) against h11's, Hypercorn's
own: the same bytes sent to both over real sockets, their answers compared.

Two processes serve the same echo application (tests/serving/http1_echo.py) through the
shipped serving base, one with ``http1_parser = "h11"``, one with ``"llhttp"``. Each input
goes to both at once; what each sends back until it closes is split into answers (the
Date field masked) and compared:

- every request both accept is answered identically, byte for byte: status, fields in
  order, framing (Content-Length, chunked, to the close), body, and when the connection
  ends;
- llhttp never answers where h11 refuses (an answer of 400 or more, or the connection
  closed without one): at the first answer that differs, llhttp's is a refusal or none.

A ``probe`` request (``GET /__probe`` with ``Connection: close``) follows each input unless
the case says otherwise: what the input left behind (an unfinished body, a smuggled
request) shows in how the probe is read, and the server then closes at once.

The corpus (tests/serving/http1_corpus/*.yaml) holds named cases: PortSwigger's request
smuggling (CL.TE, TE.CL, TE.TE obfuscations), RFC 9112 section by section, connection
management, answers' framing, the ways out of HTTP/1.1. Each case says what h11 does
(``h11: answers | refuses | closes | switches``: all answered below 400, some refused,
closed without a final answer, or turned to HTTP/2) and how llhttp compares
(``llhttp: same | stricter | refuses-too``: identical; llhttp refuses where h11
answered; both refuse, differently). Other keys:
``request`` (a string, or a list of parts and ``{repeat, times}``), ``probe: false``,
``split: true`` (each part in a write of its own), ``http2: true`` (the connection turns
to HTTP/2: frames compared). (The end of the stream inside a request depends on when the
server reads it: tests/serving/test_llhttp_h1.py compares that in process.)

The corpus grows with every bug: any input on which the two protocols were found to
differ where they should not, or that got past either in production, is added here as a
case, with what each must do, before the fix.

Hypothesis then makes heads and bodies from a grammar with hostile bytes (NUL, CR, LF,
DEL, high bytes, tabs, spaces in names) and random chunking, fed the same way.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, free_port, start, stop

CORPUS = Path(__file__).parent / "http1_corpus"
PROBE = b"GET /__probe HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
READ_LIMIT_S = 8.0  # a server that neither answers nor closes within this fails the case
DATE = re.compile(rb"(?im)^(date: )[^\r\n]*")
PARSERS = ("h11", "llhttp")


@dataclass(frozen=True)
class Case:
    name: str
    ref: str
    parts: list[bytes]
    h11: str
    llhttp: str
    probe: bool = True
    split: bool = False
    http2: bool = False

    def writes(self) -> list[bytes]:
        tail = PROBE if self.probe else b""
        if self.split:
            return [*self.parts[:-1], self.parts[-1] + tail]
        return [b"".join(self.parts) + tail]


def load_corpus() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text()):
            request = entry.pop("request")
            parts = request if isinstance(request, list) else [request]
            entry["parts"] = [
                part["repeat"].encode("latin-1") * part["times"]
                if isinstance(part, dict)
                else part.encode("latin-1")
                for part in parts
            ]
            cases.append(Case(**entry))
    return cases


CASES = load_corpus()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    logs = tmp_path_factory.mktemp("http1-echo")
    ports = {parser: free_port() for parser in PARSERS}
    procs = {
        parser: start(
            f"echo-{parser}",
            [sys.executable, "-m", "tests.serving.http1_echo", parser, str(port)],
            {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
            logs,
        )
        for parser, port in ports.items()
    }
    try:
        for parser, port in ports.items():
            wait_listening(port, procs[parser])
        yield ports
    finally:
        stop(procs)


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the echo server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
        else:
            return
    raise AssertionError(f"nothing listens on {port}")


def exchange(port: int, writes: list[bytes]) -> bytes:
    """Send the writes (a pause between two), then read until the server closes."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_LIMIT_S) as sock:
        for index, data in enumerate(writes):
            if index:
                time.sleep(0.05)
            try:
                sock.sendall(data)
            except OSError:
                break  # closed on us, what it sent is read below
        deadline = time.monotonic() + READ_LIMIT_S
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                return received
            received += data
    raise AssertionError(f"still open after {READ_LIMIT_S}s, having sent {received[:200]!r}")


def both(servers: dict[str, int], writes: list[bytes]) -> dict[str, bytes]:
    with ThreadPoolExecutor(len(PARSERS)) as pool:
        futures = {p: pool.submit(exchange, servers[p], writes) for p in PARSERS}
        return {parser: future.result() for parser, future in futures.items()}


@dataclass(frozen=True)
class Answer:
    status: int
    head: bytes  # status line and fields, the Date masked
    body: bytes

    @property
    def refusal(self) -> bool:
        return self.status >= 400


def answers(stream: bytes) -> tuple[list[Answer], bytes]:
    """The HTTP/1.1 answers in what a server sent, and what follows them."""
    found: list[Answer] = []
    pos = 0
    while stream.startswith(b"HTTP/1.1 ", pos):
        end = stream.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head, pos = stream[pos : end + 4], end + 4
        status = int(head[9:12])
        fields = {}
        for line in head.split(b"\r\n")[1:-2]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        body = b""
        if status < 200 or status in (204, 304) or stream.startswith(b"HTTP/1.1 ", pos):
            pass  # informational, no body, or the answer to a HEAD
        elif fields.get(b"transfer-encoding") == b"chunked":
            while True:
                line_end = stream.find(b"\r\n", pos)
                if line_end < 0:
                    break
                size = int(stream[pos:line_end], 16)
                body += stream[line_end + 2 : line_end + 2 + size]
                pos = line_end + 2 + size + 2
                if size == 0:
                    break
        elif b"content-length" in fields:
            size = int(fields[b"content-length"])
            body, pos = stream[pos : pos + size], pos + size
        else:
            body, pos = stream[pos:], len(stream)  # delimited by the close
        found.append(Answer(status, DATE.sub(rb"\1*", head), body))
    return found, stream[pos:]


def h11_outcome(stream: bytes, *, http2: bool = False) -> str:
    found, rest = answers(stream)
    if any(answer.refusal for answer in found):
        return "refuses"
    if http2 and frames(rest):
        return "switches"
    return "answers" if any(answer.status >= 200 for answer in found) else "closes"


def compare(h11: bytes, llhttp: bytes, *, http2: bool = False) -> str:
    """How llhttp's answers compare with h11's (see the module); AssertionError if llhttp
    answered where h11 refused, or answered otherwise."""
    expected, expected_rest = answers(h11)
    got, got_rest = answers(llhttp)
    if http2:  # what follows the HTTP/1.1 part is HTTP/2 frames, compared in kind
        expected_rest, got_rest = frames(expected_rest), frames(got_rest)
    for index in range(max(len(expected), len(got))):
        want = expected[index] if index < len(expected) else None
        have = got[index] if index < len(got) else None
        if want == have:
            continue
        if have is None or have.refusal:
            return "stricter" if want is not None and not want.refusal else "refuses-too"
        raise AssertionError(f"answer {index} differs:\nh11:    {want}\nllhttp: {have}")
    if expected_rest != got_rest:
        if not got_rest:
            return "refuses-too"
        raise AssertionError(f"after the answers:\nh11:    {expected_rest!r}\nllhttp: {got_rest!r}")
    return "same"


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """HTTP/2 frames (RFC 9113 §4.1): type, flags, stream, and the payload but for HEADERS
    (HPACK carries the Date, Huffman-coded: its length alone is compared)."""
    found = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        kind, flags = data[3], data[4]
        stream = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        payload = data[9 : 9 + length]
        found.append((kind, flags, stream, b"" if kind == 1 else payload))
        data = data[9 + length :]
    return found


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus(servers: dict[str, int], case: Case) -> None:
    out = both(servers, case.writes())
    outcome = compare(out["h11"], out["llhttp"], http2=case.http2)
    assert (h11_outcome(out["h11"], http2=case.http2), outcome) == (case.h11, case.llhttp), (
        f"{case.ref}\nh11:    {out['h11'][:600]!r}\nllhttp: {out['llhttp'][:600]!r}"
    )


def test_the_corpus_covers_what_the_issue_names() -> None:
    names = {case.name for case in CASES}
    assert {"cl-te", "te-cl", "te-xchunked", "te-obs-fold-bare-lf", "obs-fold"} <= names
    assert {"bare-lf-everywhere", "cl-duplicate-different", "chunk-size-over-64-bits"} <= names
    assert len(CASES) >= 100
    assert {case.llhttp for case in CASES} == {"same", "stricter", "refuses-too"}


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
    ],
    ids=["request-line", "field-line", "cl-and-te", "bare-lf"],
)
def test_a_refused_request_is_answered_by_the_hook_then_closed(
    servers: dict[str, int], request_bytes: bytes
) -> None:
    """The early-error path: the application's protocol_error_hook answers (the gateway's
    gives its JSON error model and audits it), and the connection ends."""
    out = exchange(servers["llhttp"], [request_bytes + PROBE])
    (answer,), rest = answers(out)
    assert answer.status == 400 and rest == b""
    assert b"\r\nx-refused-by: hook\r\n" in answer.head
    assert b"\r\nconnection: close\r\n" in answer.head
    assert answer.body == b'{"error": "the request could not be read as HTTP", "hint": 400}'


# Hypothesis: heads and bodies from a grammar, hostile bytes mixed in at a rate drawn per
# example (none at all in a quarter of them), shrinking towards the valid.

HOSTILE = ["\x00", "\r", "\n", "\t", " ", "\x0b", "\x7f", "\x01", "\xff", ":", '"', ";", ","]
TOKEN = st.text("abcXYZ-_0!#~", min_size=1, max_size=8)
PLAIN_VALUE = st.text("abcXYZ019 =/;,-", max_size=10)


def spliced(valid: st.SearchStrategy[str]) -> Any:
    """A valid piece with a hostile byte put in it."""
    return st.tuples(valid, st.sampled_from(HOSTILE), st.integers(0, 8)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    )


class Grammar:
    """Draws each piece valid, or hostile at the example's rate (percent)."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw
        self.rate = draw(st.sampled_from([0, 3, 10, 30]))

    def pick(self, valid: Any, hostile: Any) -> Any:
        hostile_now = self.draw(st.integers(0, 99)) >= 100 - self.rate
        return self.draw(hostile if hostile_now else valid)

    def eol(self) -> str:
        return str(self.pick(st.just("\r\n"), st.sampled_from(["\n", "\r", "\r\r\n", "\r\n "])))

    def chunked(self) -> str:
        out = ""
        for _ in range(self.draw(st.integers(0, 3))):
            data = self.draw(st.text("xyz\r\n", min_size=1, max_size=12))
            size = self.pick(
                st.just(f"{len(data):x}"),
                st.sampled_from([f"0{len(data):X}", f"{len(data) + 1:x}"]),
            )
            ext = self.pick(
                st.sampled_from(["", ";a=b"]),
                st.sampled_from([";a", '; a = "q"', ";", " ", ";a b"]),
            )
            footer = self.pick(st.just("\r\n"), st.sampled_from(["\n", "", "\r"]))
            out += f"{size}{ext}{self.eol()}{data}{footer}"
        trailer = self.pick(
            st.sampled_from(["", "T: 1\r\n"]), st.sampled_from(["T: a\r\n b\r\n", "T\r\n"])
        )
        return f"{out}0{self.eol()}{trailer}\r\n"


@st.composite
def request(draw: Any) -> bytes:
    g = Grammar(draw)
    method = g.pick(
        st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS"]),
        st.sampled_from(["get", "BREW", "PRI", "CONNECT", "G T"]),
    )
    target = g.pick(
        st.sampled_from(["/", "/chunked", "/close", "/204", "/a?b=c", "*", "http://h/p", "/%00"]),
        st.text("/ab?#%\x00\x7f\xe9 ", min_size=1, max_size=5),
    )
    version = g.pick(
        st.just("HTTP/1.1"), st.sampled_from(["HTTP/1.0", "HTTP/1.2", "http/1.1", "HTTP/2.0"])
    )
    sp = st.sampled_from(["  ", "\t", ""])
    lines = [f"{method}{g.pick(st.just(' '), sp)}{target}{g.pick(st.just(' '), sp)}{version}"]
    if g.pick(st.just(True), st.just(False)):
        lines.append(f"Host: {draw(st.sampled_from(['a', 'b:80', '']))}")
    for _ in range(draw(st.integers(0, 4))):
        name = g.pick(
            st.sampled_from(["X-A", "Accept", "Connection", "Expect", "Upgrade"]) | TOKEN,
            st.sampled_from(["Host", "Content-Length", "Transfer-Encoding"]) | spliced(TOKEN),
        )
        separator = g.pick(
            st.sampled_from([": ", ":"]), st.sampled_from([" : ", ":\t", "\t:", ": \r\n "])
        )
        value = g.pick(
            st.sampled_from(["a", "close", "keep-alive", "100-continue", "h2c"]) | PLAIN_VALUE,
            st.sampled_from(["chunked", " chunked", "chunked, chunked", "5, 5", "05", "-1"])
            | spliced(PLAIN_VALUE)
            | st.text("\xe9\xff\t ", max_size=4),
        )
        lines.append(f"{name}{separator}{value}")
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    framing = g.pick(st.just(framing), st.just("both"))
    body = draw(st.text("hello\r\n", max_size=20))
    if framing in ("length", "both"):
        wrong = g.pick(st.just(0), st.integers(-2, 2))
        lines.append(f"Content-Length: {max(0, len(body) + wrong)}")
    if framing in ("chunked", "both"):
        lines.append("Transfer-Encoding: chunked")
        body = g.chunked()
    if framing == "none":
        body = g.pick(st.just(""), st.just(body))
    head = "".join(line + g.eol() for line in lines) + g.eol()
    return (head + body).encode("latin-1")


@settings(
    max_examples=int(os.environ.get("HTTP1_EXAMPLES", "200")),  # more: a longer hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=request(),
    second=st.one_of(st.just(b""), request()),
    cut=st.one_of(st.none(), st.floats(0.01, 0.99)),
)
def test_generated_requests(
    servers: dict[str, int], first: bytes, second: bytes, cut: float | None
) -> None:
    """Each example goes in one write, or in two cut anywhere (the server reads each part
    alone): what is framed across reads must not change."""
    data = first + second + PROBE
    writes = [data] if cut is None else [data[: int(len(data) * cut)], data[int(len(data) * cut) :]]
    out = both(servers, [w for w in writes if w])
    outcome = compare(out["h11"], out["llhttp"])  # raises where llhttp answers what h11 not
    event(f"h11 {h11_outcome(out['h11'])}, llhttp {outcome}")
