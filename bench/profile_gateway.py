"""`make bench-profile`: where the gateway's CPU goes under load, sampled by py-spy.

    python bench/profile_gateway.py [--seconds 20] [--connections 16] [--credential jwt|api-key]

Starts the same stack as `make bench` (scorer, gateway with TLS, RS256 JWT and API key,
rate limits and file audit; no peers), drives the gateway with wrk, and records the
gateway process with py-spy (non-blocking, idle frames left out, so the shares are of
CPU time). Writes the profile under var/bench/profile/ as ``gateway.speedscope.json``
(open it in speedscope: a flame graph, "left heavy" and "sandwich" views) and its summary
as ``gateway-top.json``, and prints the top frames by self and inclusive share and the
share of each library (by the file of the innermost frame).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import load  # noqa: E402
from bench.procs import stop  # noqa: E402
from bench.run import start_stack  # noqa: E402

# Library of a function, from the start of its file's path (first match wins).
LIBRARIES = (
    ("gateway/", "gateway (our code)"),
    ("serving/", "gateway (our code)"),
    ("hypercorn/", "hypercorn"),
    ("h11/", "h11"),
    ("h2/", "h2"),
    ("quart/", "quart"),
    ("werkzeug/", "werkzeug"),
    ("flask/", "flask (quart's base)"),
    ("aiohttp/", "aiohttp"),
    ("yarl/", "yarl"),
    ("multidict/", "multidict"),
    ("limits/", "limits"),
    ("jwt/", "pyjwt"),
    ("cryptography/", "cryptography"),
    ("ssl.py", "ssl (stdlib)"),
    ("asyncio/", "asyncio (stdlib)"),
    ("uvloop/", "uvloop"),
    ("logging/", "logging (stdlib)"),
    ("json/", "json (stdlib)"),
    ("orjson", "orjson"),
    ("blinker/", "blinker"),
    ("dataclasses.py", "dataclasses (stdlib)"),
    ("secrets.py", "secrets/random (stdlib)"),
    ("random.py", "secrets/random (stdlib)"),
    ("concurrent/", "thread pool (stdlib)"),
    ("threading.py", "thread pool (stdlib)"),
)


FORWARDING = "forwarding to the scorer (gateway/upstream/, httptools)"
# Step of the request path a sample belongs to: the innermost of these functions on its
# stack (first match from the leaf up); samples with none are the event loop's own time.
PHASES = (
    ("AuditTrail.run", "audit writer (background: seal, chain, write in a thread)"),
    ("KeyRing.run", "key refresh (background)"),
    ("Forwarder.", FORWARDING),
    ("UpstreamPool.", FORWARDING),
    ("_Connection.", FORWARDING),
    ("Limiter.", "rate limits (limits, memory://)"),
    ("JWTValidator.", "authentication (JWT)"),
    ("authenticate", "authentication"),
    ("Authenticator.", "authentication"),
    ("RequestPath.audit", "audit record (build and queue)"),
    ("RequestPath.", "gateway request path (own code)"),
    ("ScoringPath.", "gateway request path (own code)"),
    ("create_app.<locals>.", "gateway request hooks and handlers (own code)"),
    ("Quart.", "Quart/Werkzeug request handling"),
    ("ASGIHTTPConnection.", "Quart/Werkzeug request handling"),
    ("TCPServer.protocol_send", "Hypercorn: response bytes to the socket (TLS write, send)"),
    ("H11Protocol.", "Hypercorn: HTTP/1.1 protocol (h11)"),
    ("CoalescingH11Protocol.", "Hypercorn: HTTP/1.1 protocol (h11)"),
    ("HTTPStream.", "Hypercorn: HTTP/1.1 protocol (h11)"),
    ("TCPServer.", "Hypercorn: connection reads and timers (TLS read, recv)"),
    ("TimeoutReadTCPServer.", "Hypercorn: connection reads and timers (TLS read, recv)"),
    ("_worker (concurrent", "thread pool (audit file writes)"),
)


def phase(frames: list[str]) -> str:
    for frame in reversed(frames):
        for marker, name in PHASES:
            if frame.startswith(marker):
                return name
    return "event loop itself (uvloop: polling, TLS, callbacks)"


def library(function: str) -> str:
    file = function.rpartition(" (")[2].rstrip(")")
    for prefix, name in LIBRARIES:
        if file.startswith(prefix):
            return name
    return "stdlib (other)" if "/" not in file and file.endswith(".py") else "other"


def _short(path: str) -> str:
    """A frame's file without the install prefix: ``quart/app.py``, ``gateway/web/app.py``."""
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            return path.rpartition(marker)[2]
    return path


def parse_speedscope(path: Path) -> list[tuple[list[str], float]]:
    """(functions root → leaf, seconds) of every sample of every thread.

    A function is "name (file)": py-spy names a frame by its current line, which would
    split one function into many.
    """
    data = json.loads(path.read_text())
    names = [f"{f['name']} ({_short(f.get('file', '?'))})" for f in data["shared"]["frames"]]
    stacks = []
    for profile in data["profiles"]:
        for sample, weight in zip(profile["samples"], profile["weights"], strict=True):
            if sample:
                stacks.append(([names[i] for i in sample], float(weight)))
    return stacks


def summarise(stacks: list[tuple[list[str], float]], top: int) -> dict[str, object]:
    total = sum(n for _, n in stacks) or 1.0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    for frames, n in stacks:
        phases[phase(frames)] += n
        leaf = frames[-1]
        own[leaf] += n
        libraries[library(leaf)] += n
        for frame in set(frames):
            inclusive[frame] += n

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "cpu_seconds_sampled": round(total, 2),
        "self": shares(own),
        "inclusive": [
            (k, s) for k, s in shares(Counter(dict(inclusive.most_common(top * 4)))) if s < 99.5
        ][:top],
        "libraries": shares(libraries),
        "phases": shares(phases),
    }


def thread_ticks(pid: int) -> dict[str, int]:
    """utime + stime (clock ticks) of each thread of ``pid``, by "name/tid"."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks[f"{name}/{task.name}"] = int(fields[11]) + int(fields[12])
    return ticks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--credential", choices=("jwt", "api-key"), default="jwt")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--native",
        action="store_true",
        help="also sample C/Cython frames (uvloop, OpenSSL); py-spy then pauses the process "
        "for each sample, which slows it more",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "profile")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.stderr.write("py-spy is missing: `.venv/bin/pip install py-spy` (make bench-profile)\n")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stack = start_stack(ROOT / "var" / "bench" / "profile-stack", {"mlserver", "flask"})
    target = stack.targets["gateway-jwt" if args.credential == "jwt" else "gateway-apikey"]
    pid = str(stack.servers["gateway"].proc.pid)
    try:
        load.wrk(target, args.connections, 2)  # warm-up
        results: list[load.LoadResult] = []
        loader = threading.Thread(
            target=lambda: results.append(load.wrk(target, args.connections, args.seconds + 2))
        )
        loader.start()
        common = ["--pid", pid, "--duration", str(args.seconds), "--rate", str(args.rate)]
        common += ["--native"] if args.native else ["--nonblocking"]
        profile = args.out / "gateway.speedscope.json"
        before = thread_ticks(int(pid))
        subprocess.run(  # noqa: S603 - fixed arguments
            [spy, "record", *common, "--format", "speedscope", "-o", str(profile)],
            check=True,
            capture_output=True,
        )
        after = thread_ticks(int(pid))
        loader.join()
    finally:
        stop(list(stack.servers.values()))
    stacks = parse_speedscope(profile)
    summary = summarise(stacks, args.top)
    summary["load"] = {
        "rps": round(results[0].rps, 1) if results else None,
        "connections": args.connections,
        "credential": args.credential,
    }
    # Per-thread CPU from /proc over the sampled window: exact, unlike sampled "idle" guesses.
    spent = {t: after[t] - before.get(t, 0) for t in after}
    all_ticks = sum(spent.values()) or 1
    summary["threads_cpu_share"] = [
        (t, round(100 * n / all_ticks, 1)) for t, n in Counter(spent).most_common(8) if n
    ]
    (args.out / "gateway-top.json").write_text(json.dumps(summary, indent=2))
    lines = [f"gateway under wrk -c{args.connections} ({args.credential}): {summary['load']}"]
    lines.append(
        f"{summary['cpu_seconds_sampled']} s of CPU samples; share by library (innermost frame):"
    )
    lines += [f"  {share:5.1f}%  {name}" for name, share in summary["libraries"]]  # type: ignore[attr-defined]
    lines.append("share of the process's CPU by thread (/proc/<pid>/task, same window):")
    lines += [f"  {share:5.1f}%  {name}" for name, share in summary["threads_cpu_share"]]  # type: ignore[attr-defined]
    lines.append("share by step of the request path (innermost step on the stack):")
    lines += [f"  {share:5.1f}%  {name}" for name, share in summary["phases"]]  # type: ignore[attr-defined]
    lines.append("top frames by self share:")
    lines += [f"  {share:5.1f}%  {name}" for name, share in summary["self"]]  # type: ignore[attr-defined]
    lines.append("top frames by inclusive share:")
    lines += [f"  {share:5.1f}%  {name}" for name, share in summary["inclusive"]]  # type: ignore[attr-defined]
    lines.append(f"profile (speedscope) and summary in {args.out}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
