"""`make bench`: scoregate beside its peers, figures B1-B11 of BENCHMARKS.md from one run.

    python bench/run.py [--seconds 8] [--warmup 2] [--reps 2] [--soak 120] [--quick]
                        [--without mlserver,flask] [--no-batching] [--json PATH]

Starts every server itself on loopback (bench/peers.py): our scorer, the gateway (TLS,
RS256 JWT and API key, a rate limit that never triggers, file audit), HAProxy 2.6 in
front of the same scorer, MLServer and Flask on gunicorn serving the same pipeline.
Drives each with wrk (bench/post.lua) in bounded runs, a warm-up discarded before each,
repetitions interleaved (the second in reverse order, so that drift on a shared machine
hits every target alike), samples each server's CPU and resident memory from /proc, and
cross-checks one figure with hey. B5 and B8 come from bench/hotpath.py, B6 from
bench/batching.py (short), B9 (fairness under abuse) from bench/fairness.py, B10 and B11
(binary tensors beside JSON, digits images and a 1,000-row iris batch) from
bench/binary.py on a stack of its own after the others. Prints a
table and JSON, and writes the JSON to var/bench/bench.json. Every figure is a ratio or
a difference measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import binary, fairness, load, peers  # noqa: E402
from bench.load import LoadError, LoadResult, Target  # noqa: E402
from bench.procs import Server, measure, sample_rss, stop, wait_ready  # noqa: E402

MIB = 1024 * 1024
OPTIONAL_PEERS = ("mlserver", "flask")
# (target, connections) of each repetition, in this order (reversed in the next one).
C16 = ("direct", "gateway-jwt", "haproxy", "gateway-apikey", "mlserver", "flask")
C1 = ("direct", "gateway-jwt", "haproxy")
# Which server is the front of each target (its CPU per request is the B4 figure).
FRONT = {
    "direct": "scorer",
    "gateway-jwt": "gateway",
    "gateway-apikey": "gateway",
    "haproxy": "haproxy",
    "mlserver": "mlserver",
    "flask": "flask",
}
THROUGH_SCORER = ("direct", "gateway-jwt", "gateway-apikey", "haproxy")


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@dataclass
class Run:
    """One measured load run, with what each server spent over it."""

    target: str
    connections: int
    rep: int
    tool: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)


def _run(result: LoadResult, rep: int, cpu: dict[str, float], rss: dict[str, int]) -> Run:
    return Run(
        target=result.target,
        connections=result.connections,
        rep=rep,
        tool=result.tool,
        requests=result.requests,
        seconds=round(result.seconds, 3),
        rps=round(result.rps, 1),
        p50_ms=round(result.p50_ms, 3),
        p90_ms=round(result.p90_ms, 3),
        p99_ms=round(result.p99_ms, 3),
        errors=result.errors,
        cpu_s={k: round(v, 3) for k, v in cpu.items()},
        peak_rss_mib={k: round(v / MIB, 1) for k, v in rss.items()},
    )


# -- the stack ------------------------------------------------------------------------------
@dataclass
class Stack:
    servers: dict[str, Server]
    targets: dict[str, Target]
    ca: Path
    state: Path
    versions: dict[str, str]
    token: str  # the bench issuer's RS256 token (for the in-process JWT figures)


def _check_answers(target: Target, ca: Path) -> None:
    """One request through ``target`` before any load: 200 and the right prediction.

    TLS here verifies the certificate against the dev CA (wrk and hey do not verify).
    """
    url = (
        target.url.replace("127.0.0.1", "localhost")
        if target.url.startswith("https")
        else target.url
    )
    headers = {"content-type": "application/json"}
    if target.header:
        name, _, value = target.header.partition(":")
        headers[name] = value.strip()
    request = urllib.request.Request(url, data=target.body.read_bytes(), headers=headers)  # noqa: S310
    context = ssl.create_default_context(cafile=str(ca)) if url.startswith("https") else None
    with urllib.request.urlopen(request, timeout=10, context=context) as reply:  # noqa: S310
        body = json.loads(reply.read())
    found = json.dumps(body)
    if "setosa" not in found:
        raise RuntimeError(f"{target.name} answered without the expected prediction: {found[:300]}")


def start_stack(work: Path, without: set[str]) -> Stack:
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    logs = state / "logs"
    versions = {"haproxy": _tool_version(["haproxy", "-v"]), "wrk": _tool_version(["wrk", "-v"])}
    side_bin: Path | None = None
    if not set(OPTIONAL_PEERS) <= without:
        started = time.monotonic()
        say("side virtualenv (MLServer, mlserver-sklearn, Flask, gunicorn) ...")
        side_bin = peers.ensure_side_venv(work / "venv-side", work / "venv-side-install.log")
        say(f"  ready in {time.monotonic() - started:.0f}s")
        versions["mlserver"] = peers.side_version(side_bin, "mlserver")
        versions["gunicorn"] = peers.side_version(side_bin, "gunicorn")
    certs = peers.certificates(work / "certs")
    folder = peers.train_model(state / "models")
    credentials = peers.identity(state)
    bodies = peers.write_bodies(state / "bodies")
    servers: dict[str, Server] = {}
    try:
        servers["scorer"], scorer_port = peers.start_scorer(state / "models", logs)
        policies = peers.write_gateway_policies(state, scorer_port)
        servers["gateway"], gateway_port = peers.start_gateway(state, certs, policies, logs)
        servers["haproxy"], haproxy_port = peers.start_haproxy(
            state, certs, credentials, scorer_port, logs
        )
        joblib_file = state / "side" / "model.joblib"
        if side_bin is not None:
            digest = peers.export_joblib(folder, joblib_file)
            if "mlserver" not in without:
                servers["mlserver"], mlserver_port = peers.start_mlserver(
                    state, side_bin, joblib_file, logs
                )
            if "flask" not in without:
                servers["flask"], flask_port = peers.start_flask(
                    side_bin, joblib_file, digest, logs
                )
        wait_ready(servers["scorer"], f"http://127.0.0.1:{scorer_port}/v2/health/ready")
        peers.ready_gateway(servers["gateway"], gateway_port, certs.ca_cert)
        v1 = peers.V1_PATH
        targets = {
            "direct": Target("direct", f"http://127.0.0.1:{scorer_port}{v1}", bodies["v1"]),
            "gateway-jwt": Target(
                "gateway-jwt",
                f"https://127.0.0.1:{gateway_port}{v1}",
                bodies["v1"],
                credentials.bearer_header,
            ),
            "gateway-apikey": Target(
                "gateway-apikey",
                f"https://127.0.0.1:{gateway_port}{v1}",
                bodies["v1"],
                credentials.api_key_header,
            ),
            "haproxy": Target(
                "haproxy",
                f"https://127.0.0.1:{haproxy_port}{v1}",
                bodies["v1"],
                credentials.bearer_header,
            ),
        }
        if "mlserver" in servers:
            wait_ready(
                servers["mlserver"], f"http://127.0.0.1:{mlserver_port}/v2/models/iris/ready"
            )
            targets["mlserver"] = Target(
                "mlserver", f"http://127.0.0.1:{mlserver_port}{peers.V2_PATH}", bodies["v2"]
            )
        if "flask" in servers:
            wait_ready(servers["flask"], f"http://127.0.0.1:{flask_port}/health")
            targets["flask"] = Target("flask", f"http://127.0.0.1:{flask_port}{v1}", bodies["v1"])
        for target in targets.values():
            _check_answers(target, certs.ca_cert)
    except BaseException:
        stop(list(servers.values()))
        raise
    return Stack(servers, targets, certs.ca_cert, state, versions, credentials.token)


def _tool_version(args: list[str]) -> str:
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except OSError:
        return "missing"
    return (run.stdout + run.stderr).strip().splitlines()[0] if run.stdout + run.stderr else "?"


# -- load -----------------------------------------------------------------------------------
def load_run(
    stack: Stack,
    target: str,
    connections: int,
    seconds: float,
    warmup_s: float,
    rep: int,
    tool: Callable[[Target, int, float], LoadResult] = load.wrk,
) -> Run:
    spec = stack.targets[target]
    if warmup_s > 0:
        tool(spec, connections, warmup_s)  # discarded: connections, caches, JIT-less warm-up
    servers = list(stack.servers.values())
    with measure(servers) as usage:
        result = tool(spec, connections, seconds)
    for server in servers:
        server.check_alive()
    run = _run(result, rep, usage.cpu_s, usage.peak_rss)
    say(
        f"  {run.tool} {target:<15} c{connections:<3} rep {rep}: {run.rps:9.1f} req/s  "
        f"p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  errors {run.errors}"
    )
    return run


def matrix(stack: Stack, seconds: float, warmup_s: float, reps: int) -> list[Run]:
    order = [(t, 16) for t in C16] + [(t, 1) for t in C1]
    order = [(t, c) for t, c in order if t in stack.targets]
    runs = []
    for rep in range(1, reps + 1):
        say(f"repetition {rep} of {reps}")
        for target, connections in order if rep % 2 else reversed(order):
            runs.append(load_run(stack, target, connections, seconds, warmup_s, rep))
    return runs


def soak(stack: Stack, seconds: float) -> dict[str, Any]:
    """The gateway's RSS every few seconds under steady load (wrk -c16, JWT) for ``seconds``."""
    every = 5.0 if seconds >= 60 else max(1.0, seconds / 10)
    say(f"soak: {seconds:.0f}s of gateway load, RSS every {every:.0f}s")
    result: list[LoadResult] = []
    loader = threading.Thread(
        target=lambda: result.append(load.wrk(stack.targets["gateway-jwt"], 16, seconds)),
        daemon=True,
    )
    loader.start()
    time.sleep(min(1.0, every))
    points = sample_rss(
        stack.servers["gateway"], seconds - 1, every, until=lambda: not loader.is_alive()
    )
    loader.join()
    mib = [(t, rss / MIB) for t, rss in points]
    half = [p for p in mib if p[0] >= mib[-1][0] / 2]
    slope_all, slope_late = _slope(mib) * 60, _slope(half) * 60
    return {
        "seconds": seconds,
        "every_s": every,
        "requests": result[0].requests if result else 0,
        "rps": round(result[0].rps, 1) if result else 0.0,
        "errors": result[0].errors if result else -1,
        "start_mib": round(mib[0][1], 1),
        "end_mib": round(mib[-1][1], 1),
        "slope_mib_per_min": round(slope_all, 2),
        "slope_second_half_mib_per_min": round(slope_late, 2),
        # After the first half (pools, caches and counters filled), it must stop growing.
        "flat": abs(slope_late) < 1.0,
        "samples": [(round(t, 1), round(m, 1)) for t, m in mib],
    }


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


# -- micro figures --------------------------------------------------------------------------
def hotpath_figures(n: int) -> dict[str, Any]:
    from bench import hotpath

    try:
        return {
            k: round(v, 3)
            for k, v in asyncio.run(
                hotpath.main(n, os.environ.get("BENCH_REDIS", "async+redis://127.0.0.1:6379"))
            ).items()
        }
    except Exception as exc:  # Redis away: B8 cannot be measured; say why, go on
        return {"error": f"{type(exc).__name__}: {exc}"}


def http1_figures(n: int) -> dict[str, Any]:
    """What parsing a request and writing its answer costs in Hypercorn's HTTP/1.1
    protocol, h11 against llhttp, CPU µs per request (bench/http1.py; part of B4)."""
    from bench import http1

    try:
        return http1.main(n)
    except Exception as exc:  # a figure of detail: say why it is missing, go on
        return {"error": f"{type(exc).__name__}: {exc}"}


def jwt_figures(state: Path, token: str, n: int) -> dict[str, float]:
    """RS256 verification in the gateway's validator: every time, and from its verdict cache.

    HAProxy verifies the signature on every request; the gateway verifies a token once and
    then serves it from a cache keyed by its SHA-256, never past ``exp``, so B1's JWT path
    costs the gateway the cached figure. Both are measured here to show the difference.
    """
    from gateway.identity.tokens import IssuerConfig, JWTValidator, VerificationKey, load_public_key

    keys = {
        peers.KID: VerificationKey(
            peers.KID,
            peers.ISSUER,
            "RS256",
            load_public_key((state / "jwt-rs256-public.pem").read_text()),
        )
    }
    validator = JWTValidator(
        [IssuerConfig("bench", peers.ISSUER, peers.AUDIENCE, frozenset({"RS256"}))]
    )

    def uncached() -> None:
        validator.set_keys(keys)  # drops the verdict cache
        validator.authenticate(token)

    def cached() -> None:
        validator.authenticate(token)

    return {
        "jwt_rs256_verify_us": round(_per_call_us(uncached, n), 2),
        "jwt_cached_us": round(_per_call_us(cached, n * 5), 2),
    }


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 200)):
        fn()
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(runs)


def batching_figures(work: Path) -> dict[str, Any]:
    """B6, short: the digits CNN at concurrencies 1 and 32, 3 s each (bench/batching.py)."""
    out = work / "batching.json"
    args = [sys.executable, str(ROOT / "bench" / "batching.py"), "--json", str(out)]
    args += ["--models", "digits", "--concurrency", "1,32", "--seconds", "3"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)  # noqa: S603
    if run.returncode != 0 or not out.exists():
        return {"error": (run.stdout + run.stderr)[-1500:]}
    return dict(json.loads(out.read_text()))


def binary_figures(args: argparse.Namespace) -> dict[str, Any]:
    """B10 and B11 (bench/binary.py), with this run's warm-up and repetitions."""
    argv = ["--seconds", str(args.binary_seconds), "--warmup", str(args.warmup)]
    argv += ["--reps", str(args.reps), "--work", str(args.work)]
    if args.digits_repo is not None:
        argv += ["--digits-repo", str(args.digits_repo)]
    return binary.measured(binary.parser().parse_args(argv))


# -- figures --------------------------------------------------------------------------------
def _runs(runs: list[Run], target: str, connections: int) -> list[Run]:
    return [
        r for r in runs if r.target == target and r.connections == connections and r.tool == "wrk"
    ]


def _per_rep(
    runs: list[Run], a: str, b: str, connections: int, value: Callable[[Run, Run], float]
) -> list[float]:
    pairs = zip(_runs(runs, a, connections), _runs(runs, b, connections), strict=False)
    return [value(x, y) for x, y in pairs]


def _cpu_us(runs: list[Run], target: str, server: str, connections: int = 16) -> float | None:
    chosen = _runs(runs, target, connections)
    requests = sum(r.requests for r in chosen)
    if not requests:
        return None
    return sum(r.cpu_s.get(server, 0.0) for r in chosen) / requests * 1e6


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _figure(value: float | None, unit: str, what: str, **detail: Any) -> dict[str, Any]:
    return dict(_rounded({"value": value, "unit": unit, "what": what, **detail}))


def figures(
    runs: list[Run],
    hey_runs: list[Run],
    hotpath: dict[str, Any],
    jwt: dict[str, float],
    batching: dict[str, Any] | None,
    soaked: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    def rps_ratio(a: str, b: str) -> list[float]:
        return [round(v, 3) for v in _per_rep(runs, a, b, 16, lambda x, y: x.rps / y.rps)]

    def added(a: str) -> list[float]:
        return [
            round(v, 3) for v in _per_rep(runs, a, "direct", 1, lambda x, y: x.p50_ms - y.p50_ms)
        ]

    def mean_rps(target: str, connections: int = 16) -> float | None:
        return mean([r.rps for r in _runs(runs, target, connections)])

    out: dict[str, dict[str, Any]] = {}
    b1 = rps_ratio("gateway-jwt", "haproxy")
    hey_b1 = [
        x.rps / y.rps
        for x, y in zip(
            [r for r in hey_runs if r.target == "gateway-jwt"],
            [r for r in hey_runs if r.target == "haproxy"],
            strict=False,
        )
    ]
    out["B1"] = _figure(
        mean(b1),
        "x",
        "gateway e2e req/s ÷ HAProxy e2e req/s (wrk -c16, RS256 JWT, same scorer)",
        per_rep=b1,
        api_key=mean(rps_ratio("gateway-apikey", "haproxy")),
        api_key_per_rep=rps_ratio("gateway-apikey", "haproxy"),
        hey_cross_check=round(hey_b1[0], 3) if hey_b1 else None,
        gateway_jwt_rps=mean_rps("gateway-jwt"),
        gateway_api_key_rps=mean_rps("gateway-apikey"),
        haproxy_rps=mean_rps("haproxy"),
        direct_rps=mean_rps("direct"),
        gateway_over_direct=_ratio(mean_rps("gateway-jwt"), mean_rps("direct")),
        haproxy_over_direct=_ratio(mean_rps("haproxy"), mean_rps("direct")),
    )
    out["B2"] = _figure(
        mean(added("gateway-jwt")),
        "ms",
        "p50 added latency at c1: gateway path - direct path (wrk -c1)",
        per_rep=added("gateway-jwt"),
        haproxy_added_ms=mean(added("haproxy")),
        # Issue 17's goal: the gateway's added p50 at most twice HAProxy's, in one run.
        over_haproxy=_ratio(mean(added("gateway-jwt")), mean(added("haproxy"))),
        over_haproxy_per_rep=[
            _ratio(g, h) for g, h in zip(added("gateway-jwt"), added("haproxy"), strict=False)
        ],
        gateway_p50_ms=mean([r.p50_ms for r in _runs(runs, "gateway-jwt", 1)]),
        haproxy_p50_ms=mean([r.p50_ms for r in _runs(runs, "haproxy", 1)]),
        direct_p50_ms=mean([r.p50_ms for r in _runs(runs, "direct", 1)]),
    )
    b3 = rps_ratio("gateway-jwt", "mlserver")
    out["B3"] = _figure(
        mean(b3),
        "x",
        "scoregate e2e (TLS + JWT) req/s ÷ MLServer direct (no TLS, no auth), wrk -c16",
        per_rep=b3,
        mlserver_rps=mean_rps("mlserver"),
        flask_rps=mean_rps("flask"),
        direct_over_mlserver=_ratio(mean_rps("direct"), mean_rps("mlserver")),
        direct_over_flask=_ratio(mean_rps("direct"), mean_rps("flask")),
        **({} if "mlserver" in {r.target for r in runs} else {"skipped": "mlserver not run"}),
    )
    gateway_us = _cpu_us(runs, "gateway-jwt", "gateway")
    haproxy_us = _cpu_us(runs, "haproxy", "haproxy")
    out["B4"] = _figure(
        _ratio(gateway_us, haproxy_us),
        "x",
        "gateway CPU µs per request ÷ HAProxy CPU µs per request (/proc, wrk -c16)",
        gateway_us=_round(gateway_us),
        gateway_api_key_us=_round(_cpu_us(runs, "gateway-apikey", "gateway")),
        haproxy_us=_round(haproxy_us),
        scorer_us_direct=_round(_cpu_us(runs, "direct", "scorer")),
        scorer_us_behind_gateway=_round(_cpu_us(runs, "gateway-jwt", "scorer")),
        scorer_us_behind_haproxy=_round(_cpu_us(runs, "haproxy", "scorer")),
        mlserver_us=_round(_cpu_us(runs, "mlserver", "mlserver")),
        flask_us=_round(_cpu_us(runs, "flask", "flask")),
    )
    b5 = hotpath.get("B5_hot_path_us")
    out["B5"] = _figure(
        b5,
        "µs",
        "auth (API key) + rate limit (memory) + audit enqueue, µs per request (bench/hotpath.py)",
        **{k: v for k, v in hotpath.items() if not k.startswith(("B5", "B8"))},
        **jwt,
    )
    out["B6"] = _batching_figure(batching)
    rss: dict[str, float] = {}
    for run in runs:
        for server, mib in run.peak_rss_mib.items():
            if FRONT.get(run.target) == server or (server == "scorer" and run.target != "mlserver"):
                rss[server] = max(rss.get(server, 0.0), mib)
    out["B7"] = _figure(
        rss.get("gateway"),
        "MiB",
        "peak resident memory (VmRSS) under load: the gateway (value), the scorers and peers",
        peak_rss_mib=rss,
        soak=None if soaked is None else {k: v for k, v in soaked.items() if k != "samples"},
    )
    b8 = hotpath.get("B8_redis_over_memory")
    out["B8"] = _figure(
        b8,
        "x",
        "rate-limit decision cost, Redis ÷ memory:// (bench/hotpath.py)",
        memory_us=hotpath.get("ratelimit_memory_us"),
        redis_us=hotpath.get("ratelimit_redis_us"),
        **({"error": hotpath["error"]} if "error" in hotpath else {}),
    )
    return out


def _fairness_figure(fair: dict[str, Any]) -> dict[str, Any]:
    ratios = {k: round(v["p99_ratio"], 2) for k, v in fair.items() if k != "baseline"}
    return _figure(
        max(ratios.values()),
        "x",
        "a polite client's p99 beside each abuse ÷ its p99 alone (worst of them)",
        ratios=ratios,
        baseline_p99_ms=round(fair["baseline"]["p99_ms"], 2),
        polite_failures={k: v["failures"] for k, v in fair.items()},
        polite_statuses={k: v["statuses"] for k, v in fair.items()},
    )


def _batching_figure(batching: dict[str, Any] | None) -> dict[str, Any]:
    what = "torch scorer: dynamic batching images/s ÷ raw batched forward (ceiling), digits CNN"
    if batching is None:
        return _figure(None, "x", what, skipped="not run (--quick or --no-batching)")
    if "error" in batching:
        return _figure(None, "x", what, error=batching["error"])
    rows = batching["rows"]
    top = max(rows, key=lambda r: r["concurrency"])
    return _figure(
        top["of_ceiling"],
        "x",
        what + f", c{top['concurrency']} on {top['device']}",
        rows=[
            {
                k: r[k]
                for k in (
                    "concurrency",
                    "device",
                    "batched_ips",
                    "ceiling_ips",
                    "batch1_ips",
                    "of_ceiling",
                    "of_batch1",
                    "mean_rows_per_pass",
                )
            }
            for r in rows
        ],
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- report ---------------------------------------------------------------------------------
def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}{unit}" if unit == "x" else f"{value:,.2f} {unit}"


def report(result: dict[str, Any]) -> str:
    figs = result["figures"]
    lines = ["scoregate bench — figures of BENCHMARKS.md (one run, ratios side by side)", ""]
    lines.append(f"{'id':<4} {'value':>12}  what")
    for fid, fig in figs.items():
        lines.append(f"{fid:<4} {_fmt(fig['value'], fig['unit']):>12}  {fig['what']}")
    b1, b2, b4, b7 = figs["B1"], figs["B2"], figs["B4"], figs["B7"]
    lines += [
        "",
        f"B1   API-key path ÷ HAProxy: {_fmt(b1['api_key'], 'x')}; hey cross-check (JWT): "
        f"{_fmt(b1['hey_cross_check'], 'x')}; gateway ÷ direct scorer: "
        f"{_fmt(b1['gateway_over_direct'], 'x')}; "
        f"HAProxy ÷ direct: {_fmt(b1['haproxy_over_direct'], 'x')}",
        f"B2   ÷ HAProxy's added p50 ({_fmt(b2['haproxy_added_ms'], 'ms')}): "
        f"{_fmt(b2['over_haproxy'], 'x')}; p50 at c1: gateway "
        f"{_fmt(b2['gateway_p50_ms'], 'ms')}, HAProxy {_fmt(b2['haproxy_p50_ms'], 'ms')}, "
        f"direct {_fmt(b2['direct_p50_ms'], 'ms')}",
        f"B4   CPU µs/request: gateway {_fmt(b4['gateway_us'], 'µs')} (API key "
        f"{_fmt(b4['gateway_api_key_us'], 'µs')}), HAProxy {_fmt(b4['haproxy_us'], 'µs')}, "
        f"scorer {_fmt(b4['scorer_us_direct'], 'µs')}, MLServer {_fmt(b4['mlserver_us'], 'µs')}, "
        f"Flask {_fmt(b4['flask_us'], 'µs')}",
        "B4   HTTP/1.1 parse + answer, CPU µs/request (bench/http1.py): "
        + ", ".join(f"{k} {v}" for k, v in (b4.get("http1_protocol") or {}).items()),
        "B7   peak RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in b7["peak_rss_mib"].items()),
    ]
    b9 = figs.get("B9")
    if b9 is not None:
        lines.append(
            f"B9   polite p99 beside each abuse ÷ alone (baseline {b9['baseline_p99_ms']} ms): "
            + ", ".join(f"{k} {v}x" for k, v in b9["ratios"].items())
        )
    if "B10" in figs:
        lines += binary.report(figs)
    if b7["soak"]:
        s = b7["soak"]
        lines.append(
            f"B7   soak {s['seconds']:.0f}s: gateway RSS {s['start_mib']} → {s['end_mib']} MiB, "
            f"slope {s['slope_mib_per_min']} MiB/min "
            f"(second half {s['slope_second_half_mib_per_min']}), "
            f"flat: {s['flat']}"
        )
    lines += [
        "",
        f"{'target':<22} {'conn':>4} {'req/s (each rep)':>16} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'front µs/req':>12} {'scorer µs/req':>13} {'errors':>6}",
    ]
    keys = sorted(
        {(r["target"], r["connections"], r["tool"]) for r in result["runs"]},
        key=lambda k: (k[2], -k[1], C16.index(k[0]) if k[0] in C16 else 9),
    )
    for target, conn, tool in keys:
        chosen = [
            r
            for r in result["runs"]
            if (r["target"], r["connections"], r["tool"]) == (target, conn, tool)
        ]
        requests = sum(r["requests"] for r in chosen) or 1
        front_us = sum(r["cpu_s"].get(FRONT[target], 0) for r in chosen) / requests * 1e6
        behind = ""
        if target in THROUGH_SCORER:
            behind = f"{sum(r['cpu_s'].get('scorer', 0) for r in chosen) / requests * 1e6:.0f}"
        rps = " / ".join(f"{r['rps']:.0f}" for r in chosen)
        name = target if tool == "wrk" else f"{target} (hey)"
        lines.append(
            f"{name:<22} {conn:>4} {rps:>16} {statistics.fmean(r['p50_ms'] for r in chosen):>8.2f} "
            f"{statistics.fmean(r['p99_ms'] for r in chosen):>8.2f} {front_us:>12.0f} "
            f"{behind:>13} {sum(r['errors'] for r in chosen):>6}"
        )
    audit = result.get("audit") or {}
    lines += [
        "",
        f"audit trail of the run: {audit.get('records')} records, {audit.get('checkpoints')} "
        f"signed checkpoints, verified: {audit.get('verified')}",
        f"elapsed {result['elapsed_s']:.0f}s; JSON in {result['json_path']}",
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="each measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded run before each")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--hey-seconds", type=float, default=4.0)
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also sample the gateway's RSS under load this long (B7 flat check)",
    )
    parser.add_argument("--without", default="", help="skip peers: mlserver,flask")
    parser.add_argument("--no-batching", action="store_true", help="skip B6 (torch scorer)")
    parser.add_argument("--no-binary", action="store_true", help="skip B10 and B11")
    parser.add_argument("--binary-seconds", type=float, default=3.0, help="each B10/B11 run")
    parser.add_argument(
        "--digits-repo", type=Path, help="B10's trained digits CNN (default: <work>/models-digits)"
    )
    parser.add_argument("--hotpath-n", type=int, default=5000)
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--json", type=Path, help="default: <work>/bench.json")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1s runs, one repetition, no B6 (seconds, not figures)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.reps, args.hey_seconds = 1.0, 1.0, 1, 1.0
        args.hotpath_n, args.no_batching, args.binary_seconds = 300, True, 1.0
    without = {p for p in args.without.split(",") if p}
    if without - set(OPTIONAL_PEERS):
        parser.error(f"--without takes {', '.join(OPTIONAL_PEERS)}")
    json_path = args.json or args.work / "bench.json"
    started_at = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    try:
        for tool in ("wrk", "hey", "haproxy"):
            load.require(tool)
    except LoadError as exc:
        say(f"bench: {exc} (`make bench` installs it as root: bench/ensure-tools)")
        return 2

    stack = start_stack(args.work, without)
    soaked = None
    try:
        runs = matrix(stack, args.seconds, args.warmup, args.reps)
        say("hey cross-check (B1)")
        hey_runs = [
            load_run(stack, t, 16, args.hey_seconds, 0, 1, tool=load.hey)
            for t in ("gateway-jwt", "haproxy")
        ]
        if args.soak:
            soaked = soak(stack, args.soak)
        say("fairness (B9): a polite client beside each abuse")
        gateway = stack.targets["gateway-apikey"]
        base = gateway.url.split("/v1/", 1)[0]
        assert gateway.header is not None  # noqa: S101 - the API-key target has one
        fair = fairness.figures(base, stack.ca, gateway.header, max(2.0, args.seconds / 2))
    finally:
        stop(list(stack.servers.values()))  # the gateway drains its audit queue and signs
    audit = peers.verify_audit(stack.state)
    say("hot path (B5, B8) and RS256 verification")
    hotpath = hotpath_figures(args.hotpath_n)
    http1 = http1_figures(max(2000, args.hotpath_n * 2))
    jwt = jwt_figures(stack.state, stack.token, max(50, args.hotpath_n // 10))
    batching = None
    if not args.no_batching:
        say("dynamic batching (B6), short")
        batching = batching_figures(args.work)
    binary_run = None
    if not args.no_binary:
        say("binary tensors beside JSON (B10 digits, B11 iris), a stack of their own")
        binary_run = binary_figures(args)
    result: dict[str, Any] = {
        "bench": "scoregate",
        "started": started_at.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "settings": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "reps": args.reps,
            "hey_seconds": args.hey_seconds,
            "soak_s": args.soak,
            "without": sorted(without),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "tools": stack.versions,
        },
        "figures": {
            **figures(runs, hey_runs, hotpath, jwt, batching, soaked),
            "B9": _fairness_figure(fair),
            **binary.figures(binary_run),
        },
        "runs": [asdict(r) for r in runs + hey_runs],
        "soak": soaked,
        "audit": audit,
        "binary": binary_run,
        "json_path": str(json_path),
    }
    result["figures"]["B4"]["http1_protocol"] = http1
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(report(result))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps(result, ensure_ascii=False))
    failed = any(r.errors for r in runs + hey_runs) or not audit["verified"]
    # A figure that could not be measured (Redis away for B8, B6's run failing) fails too.
    failed |= any("error" in fig for fig in result["figures"].values())
    if soaked is not None and soaked["errors"]:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
