"""Where the scorer's CPU goes for the bench's iris request: in process, and under load.

    python bench/profile_scorer.py [--seconds 15] [--connections 16] [--body v2|v1]
                                   [--micro-only] [--no-spy] [--json PATH]

1. In process (``steps``): each step of the scoring path timed alone with the CPU clock
   (the process's for the ASGI path, which may hand off to a thread), best of 5 rounds:
   JSON parse, the data plane's decode and checks, the runtime's prediction, plain
   ``Pipeline.predict``, the model's own arithmetic written in numpy (what the pipeline
   computes, without any of its checks), encoding, and the whole ASGI path
   (`scorer.fastpath`) with the prediction inline, in a thread, and free.
2. Under load (``load``): the real scorer (`python -m scorer serve`, as `make bench`
   starts it) driven by wrk; its CPU µs per request from /proc, then a py-spy profile of
   it (non-blocking, idle frames left out) with the share of each step of the request
   path. Writes ``scorer.speedscope.json`` and ``scorer-top.json`` under
   var/bench/profile/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hypercorn.typing import HTTPRequestEvent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import load, peers  # noqa: E402
from bench.procs import measure, stop, wait_ready  # noqa: E402
from bench.profile_gateway import parse_speedscope, thread_ticks  # noqa: E402

# Step of the request path a sample belongs to: the innermost of these functions on its
# stack (first match from the leaf up); samples with none are the event loop's own time.
PHASES = (
    ("check_array ", "scikit-learn input checks (check_array, validate_data, tags, fitted)"),
    ("validate_data ", "scikit-learn input checks (check_array, validate_data, tags, fitted)"),
    ("check_is_fitted ", "scikit-learn input checks (check_array, validate_data, tags, fitted)"),
    (
        "_raise_or_warn_if_not_fitted ",
        "scikit-learn input checks (check_array, validate_data, tags, fitted)",
    ),
    ("get_tags ", "scikit-learn input checks (check_array, validate_data, tags, fitted)"),
    ("_check_n_features ", "scikit-learn input checks (check_array, validate_data, tags, fitted)"),
    (
        "_check_feature_names ",
        "scikit-learn input checks (check_array, validate_data, tags, fitted)",
    ),
    ("get_namespace", "scikit-learn input checks (check_array, validate_data, tags, fitted)"),
    ("config_context ", "scikit-learn config_context"),
    ("SklearnRuntime.", "the model (estimator code and arithmetic)"),
    # py-spy puts 5-10 % of the samples on the two clock reads around the prediction;
    # the same scorer timing with perf_counter instead spends no less CPU per request
    # (interleaved wrk runs), so those samples are counted with the model they wrap.
    ("Unbatched._timed ", "the model (estimator code and arithmetic)"),
    ("Unbatched.", "scheduler (Unbatched, timing)"),
    ("_worker ", "scheduler (worker thread)"),
    ("decode_v2 ", "data plane: decode and checks"),
    ("decode_v1 ", "data plane: decode and checks"),
    ("requested_outputs ", "data plane: decode and checks"),
    ("check_outputs ", "data plane: encode"),
    ("encode_v2 ", "data plane: encode"),
    ("encode_v1 ", "data plane: encode"),
    ("read_body ", "ASGI body, disconnect watch, answer (serving.asgi)"),
    ("cancel_if_client_leaves ", "ASGI body, disconnect watch, answer (serving.asgi)"),
    ("send_json ", "ASGI body, disconnect watch, answer (serving.asgi)"),
    ("ScoringPath.", "fastpath own code (routing, orjson parse and dump)"),
    ("Quart.", "Quart"),
    ("TCPServer.protocol_send", "Hypercorn: response bytes to the socket"),
    ("TCPServer.", "Hypercorn: connection reads and timers"),
    ("TimeoutReadTCPServer.", "Hypercorn: connection reads and timers"),
    ("H11Protocol.", "Hypercorn: HTTP/1.1 protocol"),
    ("CoalescingH11Protocol.", "Hypercorn: HTTP/1.1 protocol"),
    ("LlhttpProtocol.", "Hypercorn: HTTP/1.1 protocol"),
    ("_Fields.", "Hypercorn: HTTP/1.1 protocol"),
    ("HTTPStream.", "Hypercorn: HTTP/1.1 protocol"),
)


def phase(frames: list[str]) -> str:
    for frame in reversed(frames):
        for marker, name in PHASES:
            if frame.startswith(marker):
                return name
    return "event loop itself (polling, callbacks)"


def summarise(stacks: list[tuple[list[str], float]], top: int) -> dict[str, Any]:
    total = sum(n for _, n in stacks) or 1.0
    own: defaultdict[str, float] = defaultdict(float)
    inclusive: defaultdict[str, float] = defaultdict(float)
    phases: defaultdict[str, float] = defaultdict(float)
    for frames, n in stacks:
        phases[phase(frames)] += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def shares(seconds: dict[str, float], count: int) -> list[tuple[str, float]]:
        ranked = sorted(seconds.items(), key=lambda item: -item[1])[:count]
        return [(k, round(100 * v / total, 1)) for k, v in ranked]

    return {
        "cpu_seconds_sampled": round(total, 2),
        "phases": shares(phases, 20),
        "self": shares(own, top),
        # Without the chain of frames every sample has (the entry point down to the loop).
        "inclusive": [
            (k, s)
            for k, s in shares(inclusive, top * 4)
            if inclusive[k] < 0.995 * max(inclusive.values(), default=0)
        ][:top],
    }


# -- in process -----------------------------------------------------------------------------
def _best_us(fn: Callable[[], object], n: int, rounds: int = 5) -> float:
    for _ in range(max(50, n // 10)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time() - started) / n * 1e6)
    return round(best, 2)


async def _best_async_us(fn: Callable[[], Awaitable[object]], n: int, rounds: int = 5) -> float:
    for _ in range(max(50, n // 10)):
        await fn()
        await asyncio.sleep(0)
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()  # the worker threads' CPU too
        for _ in range(n):
            await fn()
            await asyncio.sleep(0)  # the loop runs between requests, as under Hypercorn
        best = min(best, (time.process_time() - started) / n * 1e6)
    return round(best, 2)


def steps(models: Path, body_file: Path, n: int) -> dict[str, float]:
    """µs of thread CPU for each step of one request, in this process."""
    import sklearn

    from scorer import dataplane
    from scorer.app import create_app
    from scorer.repository import read_model_settings
    from scorer.runtime import load_runtime
    from serving.asgi import cancel_if_client_leaves, read_body, send_json

    folder = models / peers.MODEL
    runtime = load_runtime(folder, read_model_settings(folder))
    settings = runtime.settings
    raw = body_file.read_bytes()
    body = orjson.loads(raw)
    batch = dataplane.decode_v2(body, settings)
    names = runtime.outputs[:1]
    outputs = runtime.predict(batch, names)
    pipeline = runtime.estimator  # type: ignore[attr-defined]
    scaler, classifier = pipeline[0], pipeline[-1]

    def arithmetic() -> object:
        scores = ((batch - scaler.mean_) / scaler.scale_) @ classifier.coef_.T
        return classifier.classes_[(scores + classifier.intercept_).argmax(axis=1)]

    def encode() -> bytes:
        dataplane.check_outputs(outputs)
        return dataplane.dumps(dataplane.encode_v2(outputs, settings, None)[0])

    if not np.array_equal(np.asarray(arithmetic()), pipeline.predict(batch)):
        raise RuntimeError("the numpy rendering of the pipeline disagrees with it")
    figures = {
        "orjson.loads": _best_us(lambda: orjson.loads(raw), n * 4),
        "data plane decode_v2 and checks": _best_us(
            lambda: dataplane.decode_v2(body, settings), n * 4
        ),
        "runtime.predict (the scorer's call)": _best_us(lambda: runtime.predict(batch, names), n),
        "plain Pipeline.predict": _best_us(lambda: pipeline.predict(batch), n),
        "sklearn.config_context(assume_finite=True) alone": _best_us(
            lambda: sklearn.config_context(assume_finite=True).__enter__(), n * 4
        ),
        "the model's arithmetic (numpy: scale, dot, argmax)": _best_us(arithmetic, n * 4),
        "check_outputs + encode_v2 + dumps": _best_us(encode, n * 4),
    }

    def asgi(app: Any) -> Callable[[], Awaitable[object]]:
        scope = {
            "type": "http",
            "method": "POST",
            "path": f"/v2/models/{peers.MODEL}/infer",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(raw)),
            ],
        }
        never = asyncio.Event()

        async def send(message: object) -> None:
            return None

        async def one() -> None:
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": raw, "more_body": False}
                await never.wait()
                return {"type": "http.disconnect"}

            await app(scope, receive, send)

        return one

    async def mechanics() -> None:
        async def receive() -> HTTPRequestEvent:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: object) -> None:
            return None

        await read_body(receive, limit=1 << 20, declared=None, timeout_s=60)
        with cancel_if_client_leaves(receive):
            pass
        await send_json(send, 200, b"{}")

    async def paths() -> None:
        inline = create_app({peers.MODEL: runtime}, max_body_bytes=1 << 22, inline_budget_s=1e-3)
        threaded = create_app({peers.MODEL: runtime}, max_body_bytes=1 << 22)
        figures["ASGI path, prediction inline (as served)"] = await _best_async_us(
            asgi(inline.asgi_app), n
        )
        figures["ASGI path, prediction in a worker thread"] = await _best_async_us(
            asgi(threaded.asgi_app), n
        )
        figures["serving.asgi read_body + disconnect watch + send_json"] = await _best_async_us(
            mechanics, n
        )

        @dataclass
        class Free:
            """The same model's answer, known in advance: what is left is the path."""

            settings: Any
            outputs: tuple[str, ...]

            def predict(self, rows: Any, wanted: tuple[str, ...]) -> dict[str, Any]:
                return outputs

        free = Free(settings, runtime.outputs)
        stubbed = create_app({peers.MODEL: free}, max_body_bytes=1 << 22, inline_budget_s=1e-3)
        figures["ASGI path, free prediction (all but the model)"] = await _best_async_us(
            asgi(stubbed.asgi_app), n
        )

    asyncio.run(paths())
    return figures


# -- under load -----------------------------------------------------------------------------
def under_load(
    models: Path, body_file: Path, logs: Path, args: argparse.Namespace
) -> dict[str, Any]:
    server, port = peers.start_scorer(models, logs)
    path = peers.V2_PATH if args.body == "v2" else peers.V1_PATH
    target = load.Target("direct", f"http://127.0.0.1:{port}{path}", body_file)
    result: dict[str, Any] = {"connections": args.connections}
    try:
        wait_ready(server, f"http://127.0.0.1:{port}/v2/health/ready")
        load.wrk(target, args.connections, 2)  # warm-up
        with measure([server]) as usage:
            run = load.wrk(target, args.connections, args.seconds)
        result.update(
            rps=round(run.rps, 1),
            errors=run.errors,
            p50_ms=round(run.p50_ms, 3),
            cpu_us_per_request=round(usage.cpu_s["scorer"] / max(1, run.requests) * 1e6, 1),
        )
        if args.no_spy:
            return result
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            result["profile"] = "py-spy is missing: `.venv/bin/pip install py-spy`"
            return result
        runs: list[load.LoadResult] = []
        loader = threading.Thread(
            target=lambda: runs.append(load.wrk(target, args.connections, args.seconds + 2))
        )
        loader.start()
        pid = server.proc.pid
        profile = args.out / "scorer.speedscope.json"
        before = thread_ticks(pid)
        subprocess.run(  # noqa: S603 - fixed arguments
            [
                *(spy, "record", "--pid", str(pid), "--duration", str(args.seconds)),
                *("--rate", str(args.rate), "--nonblocking", "--format", "speedscope"),
                *("-o", str(profile)),
            ],
            check=True,
            capture_output=True,
        )
        after = thread_ticks(pid)
        loader.join()
    finally:
        stop([server])
    summary = summarise(parse_speedscope(profile), args.top)
    spent = {t: after[t] - before.get(t, 0) for t in after}
    all_ticks = sum(spent.values()) or 1
    summary["threads_cpu_share"] = [
        (t, round(100 * n / all_ticks, 1)) for t, n in Counter(spent).most_common(6) if n
    ]
    result["profile"] = summary
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--body", choices=("v2", "v1"), default="v2")
    parser.add_argument("--iterations", type=int, default=2000, help="in-process calls a round")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--micro-only", action="store_true", help="in process only, no load")
    parser.add_argument("--no-spy", action="store_true", help="CPU per request, no profile")
    parser.add_argument("--load-only", action="store_true", help="no in-process steps")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "profile")
    parser.add_argument("--json", type=Path, help="default: <out>/scorer-top.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = ROOT / "var" / "bench" / "profile-scorer"
    models = work / "models"
    folder = peers.train_model(models)
    bodies = peers.write_bodies(work / "bodies")
    report: dict[str, Any] = {"model": folder.name, "body": args.body}
    lines = []
    if not args.load_only:
        report["steps_us"] = steps(models, bodies["v2"], args.iterations)
        lines.append(f"in process, µs of CPU per call (best of 5 rounds, {peers.MODEL} pipeline):")
        lines += [f"  {us:8.2f}  {name}" for name, us in report["steps_us"].items()]
    if not args.micro_only:
        report["load"] = under_load(models, bodies[args.body], work / "logs", args)
        figures = {k: v for k, v in report["load"].items() if k != "profile"}
        lines.append(f"under wrk -c{args.connections}, {args.seconds} s: {figures}")
        profile = report["load"].get("profile")
        if isinstance(profile, dict):
            lines.append("share by thread (/proc):")
            lines += [f"  {s:5.1f}%  {t}" for t, s in profile["threads_cpu_share"]]
            lines.append(f"{profile['cpu_seconds_sampled']} s sampled; share by step:")
            lines += [f"  {s:5.1f}%  {name}" for name, s in profile["phases"]]
            lines.append("top frames by self share:")
            lines += [f"  {s:5.1f}%  {name}" for name, s in profile["self"]]
            lines.append("top frames by inclusive share:")
            lines += [f"  {s:5.1f}%  {name}" for name, s in profile["inclusive"]]
    out = args.json or args.out / "scorer-top.json"
    out.write_text(json.dumps(report, indent=2))
    lines.append(f"written to {out}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
