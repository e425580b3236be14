"""Server processes of a benchmark: start, wait for, stop, and what ``/proc`` says they cost.

CPU is utime + stime from ``/proc/<pid>/stat`` summed over a server's process tree (the
process and every descendant: gunicorn's workers, MLServer's inference workers), taken
before and after a measured window. Resident memory is ``VmRSS`` from
``/proc/<pid>/status``, summed over the same tree.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its last ')'.
    return raw.rpartition(")")[2].split()


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``root`` and all its descendants, from the parent ids in ``/proc/*/stat``."""
    children = _children() if children is None else children
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def trees(servers: list[Server]) -> dict[str, list[int]]:
    """Each server's process tree, from one scan of ``/proc``."""
    children = _children()
    return {s.name: process_tree(s.proc.pid, children) for s in servers}


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime (clock ticks) of each live pid."""
    ticks = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks[pid] = int(fields[11]) + int(fields[12])  # stat fields 14 and 15
    return ticks


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


@dataclass
class Server:
    """One server under test: its root process and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")


def start(
    name: str, args: list[str], logs: Path, env: Mapping[str, str], cwd: Path | None = None
) -> Server:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(  # noqa: S603 - our own servers, fixed arguments
            args, stdout=fh, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd
        )
    return Server(name, proc, log)


def stop(servers: list[Server], timeout_s: float = 20) -> None:
    """SIGTERM every server (the gateway drains its audit queue), then wait; kill stragglers."""
    for server in servers:
        if server.proc.poll() is None:
            server.proc.terminate()
    for server in servers:
        try:
            server.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for pid in reversed(server.pids()):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            server.proc.wait()


def wait_ready(
    server: Server,
    url: str,
    ca: Path | None = None,
    timeout_s: float = 120,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Poll ``url`` until it answers 200 (TLS trusting only ``ca`` when given); a POST of
    ``body`` when given."""
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            # Loopback http(s) URLs that this benchmark builds itself.
            request = urllib.request.Request(url, data=body, headers=dict(headers or {}))  # noqa: S310
            with urllib.request.urlopen(request, timeout=2, context=context) as reply:  # noqa: S310
                if reply.status == 200:
                    return
                last = f"HTTP {reply.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.3)
    raise RuntimeError(
        f"{server.name} not ready at {url} in {timeout_s:.0f}s ({last}):\n{server.tail()}"
    )


@dataclass
class Usage:
    """What a measured window cost each server: CPU seconds and peak resident memory."""

    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)


@contextmanager
def measure(servers: list[Server], sample_every_s: float = 0.5) -> Iterator[Usage]:
    """CPU of each server's tree over the ``with`` block, and its peak RSS sampled meanwhile."""
    usage = Usage()
    before = {name: cpu_ticks(pids) for name, pids in trees(servers).items()}
    stopping = threading.Event()

    def sample() -> None:
        while True:
            for name, pids in trees(servers).items():
                usage.peak_rss[name] = max(usage.peak_rss.get(name, 0), rss_bytes(pids))
            if stopping.wait(sample_every_s):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield usage
    finally:
        stopping.set()
        sampler.join()
        for name, pids in trees(servers).items():
            # Descendants born during the window count whole; ones that died are lost (rare).
            ticks = sum(t - before[name].get(pid, 0) for pid, t in cpu_ticks(pids).items())
            usage.cpu_s[name] = ticks / CLOCK_TICKS_PER_S


def sample_rss(
    server: Server, seconds: float, every_s: float, until: Callable[[], bool] | None = None
) -> list[tuple[float, int]]:
    """(elapsed s, RSS bytes) of ``server`` every ``every_s`` for ``seconds``."""
    points = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) <= seconds:
        points.append((elapsed, rss_bytes(server.pids())))
        if until is not None and until():
            break
        time.sleep(every_s)
    return points
