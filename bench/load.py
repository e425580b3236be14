"""Load generators for `make bench`: wrk (with bench/post.lua) and hey as a cross-check.

Both keep connections alive; neither verifies the server certificate (the servers are
ours, on loopback), so TLS costs the handshake once per connection and the record layer
on every request, as for a real keep-alive client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "post.lua"


@dataclass(frozen=True)
class Target:
    """What a load run sends: where, which body, which credential header (or none)."""

    name: str
    url: str
    body: Path
    header: str | None = None  # "name: value"
    # Further "name: value" headers (a Content-Type here replaces application/json).
    extra_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadResult:
    tool: str
    target: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx answers
    bytes_read: int = 0  # response bytes on the wire (head and body), where the tool says

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class LoadError(RuntimeError):
    pass


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LoadError(f"{tool} is not installed (Debian: apt-get install -y {tool})")
    return path


def wrk(target: Target, connections: int, seconds: float, threads: int = 1) -> LoadResult:
    """One bounded wrk run; its figures come from post.lua's ``done`` as a JSON line.

    One wrk thread: it drives a few thousand requests per second with 16 connections,
    well above what the servers here reach, and leaves the most CPU to them on 2 cores.
    """
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(target.body),
        "BENCH_HEADER": target.header or "",
        "BENCH_EXTRA_HEADERS": "\n".join(target.extra_headers),
    }
    args = [
        require("wrk"),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        target.url,
    ]
    run = subprocess.run(  # noqa: S603 - fixed arguments
        args, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if run.returncode != 0 or line is None:
        raise LoadError(f"wrk failed on {target.name}: {run.stdout[-1500:]}{run.stderr[-1500:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        tool="wrk",
        target=target.name,
        connections=connections,
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=errors,
        bytes_read=raw["bytes"],
    )


_HEY_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_HEY_TOTAL = re.compile(r"Total:\s+([\d.]+) secs")
_HEY_PCT = re.compile(r"(\d+)%+ in ([\d.]+) secs")
_HEY_STATUS = re.compile(r"\[(\d{3})\]\s+(\d+) responses")


def hey(target: Target, connections: int, seconds: float) -> LoadResult:
    """One bounded hey run (HTTP/1.1, keep-alive), parsed from its summary."""
    args = [
        require("hey"),
        "-z",
        f"{max(1, round(seconds))}s",
        "-c",
        str(connections),
        "-m",
        "POST",
        "-T",
        "application/json",
        "-D",
        str(target.body),
    ]
    if target.header:
        args += ["-H", target.header]
    run = subprocess.run(  # noqa: S603 - fixed arguments
        [*args, target.url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    out = run.stdout
    rps, total = _HEY_RPS.search(out), _HEY_TOTAL.search(out)
    if run.returncode != 0 or rps is None or total is None:
        raise LoadError(f"hey failed on {target.name}: {out[-1500:]}{run.stderr[-1500:]}")
    pct = {int(p): float(s) * 1000 for p, s in _HEY_PCT.findall(out)}
    statuses = {int(code): int(n) for code, n in _HEY_STATUS.findall(out)}
    ok = statuses.get(200, 0)
    failures = out.partition("Error distribution:")[2]
    socket_errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", failures, re.MULTILINE))
    seconds_taken = float(total.group(1))
    return LoadResult(
        tool="hey",
        target=target.name,
        connections=connections,
        requests=ok,
        seconds=seconds_taken,
        p50_ms=pct.get(50, 0.0),
        p90_ms=pct.get(90, 0.0),
        p99_ms=pct.get(99, 0.0),
        errors=sum(n for code, n in statuses.items() if code != 200) + socket_errors,
    )
