"""B10 and B11 of `make bench`: the binary tensor data extension beside JSON, end to end.

    python bench/binary.py [--seconds 3] [--warmup 1] [--reps 2] [--connections 8]
                           [--images 8] [--rows 1000] [--digits-repo DIR] [--work var/bench]
                           [--json PATH] [--quick]

One stack of its own on loopback: the gateway as deployed (TLS, an API key, audit
records hash-chained and signed, verified after the run) in front of the scikit-learn
scorer (the iris pipeline) and the torch scorer (the digits CNN, on the CPU here). Two
points per model, driven by wrk through the gateway in the same run, interleaved:
- **B10, digits**: N PNG images (8) in one v2 request, as base64 ``BYTES`` in JSON
  against raw ``BYTES`` elements in binary; ``predict`` and ``probabilities`` back in
  JSON against binary;
- **B11, iris**: a 1,000-row batch, ``FP64`` rows in JSON ``data`` against binary;
  ``predict`` and ``predict_proba`` back in JSON against binary.
Bodies are built as Triton's HTTP client builds them (``tritonclient.http``'s
``generate_request_body``: the JSON header, inputs carrying
``parameters.binary_data_size``, outputs ``parameters.binary_data``, then the tensors'
bytes; ``Inference-Header-Content-Length`` the header's size). Each point's answer is
checked once before it is timed: 200 and the model's own predictions.

The shipped iris model (``max_batch`` 64) and routes (64 instances) refuse 1,000 rows:
this stack has its own copy of the model's settings (``max_batch`` = rows) and routes
whose ``max_instances`` and ``max_elements`` hold them. Nothing shipped is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import re
import shutil
import ssl
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench import load, peers  # noqa: E402
from bench.load import Target  # noqa: E402
from bench.procs import Server, free_port, measure, start, stop, wait_ready  # noqa: E402
from serving.binary import (  # noqa: E402
    HEADER,
    OCTET_STREAM,
    bytes_elements,
    chunks,
    encode_bytes,
    join,
    split,
)

FIGURES = {"digits": "B10", "iris": "B11"}
ENCODINGS = ("json", "binary")
OWNER = "bench-binary"
SCOPES = {"iris": "models:iris", "digits": "models:digits"}
IRIS_OUTPUTS = ("predict", "predict_proba")
DIGITS_OUTPUTS = ("predict", "probabilities")
_LITTLE = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# -- bodies, as the standard clients build them -------------------------------------------
def v2_request(
    name: str,
    datatype: str,
    shape: list[int],
    data: np.ndarray[Any, Any] | list[bytes],
    outputs: tuple[str, ...],
    *,
    binary: bool,
) -> tuple[bytes, int | None]:
    """A v2 inference body and its JSON header's size (None when all of it is JSON), as
    tritonclient.http builds it for one input and named outputs (``{"inputs": [...],
    "outputs": [...]}`` in compact JSON, then the input's bytes). ``BYTES`` items go
    as given: UTF-8 text (base64 for images) in JSON, raw bytes with a 4-byte
    little-endian length each in binary."""
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    raw = b""
    if binary:
        if datatype == "BYTES":
            raw = encode_bytes(list(data))
        else:
            raw = np.ascontiguousarray(data, dtype=_LITTLE[datatype]).tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
    elif datatype == "BYTES":
        tensor["data"] = [bytes(item).decode() for item in data]
    else:
        tensor["data"] = np.asarray(data).reshape(-1).tolist()
    header = json.dumps(
        {
            "inputs": [tensor],
            "outputs": [{"name": o, "parameters": {"binary_data": binary}} for o in outputs],
        },
        separators=(",", ":"),  # rapidjson's compact form, as tritonclient writes it
    ).encode()
    if not binary:
        return header, None
    return join(header, [raw])


def decode_response(body: bytes, header_length: str | None) -> dict[str, Any]:
    """Each output of a v2 answer as a list (BYTES as text) or a NumPy array, whether its
    data came in the JSON or in binary after it."""
    if header_length is None:
        parsed = json.loads(body)
        rest = memoryview(b"")
    else:
        head, rest = split(body, header_length)
        parsed = json.loads(bytes(head))
    found: dict[str, Any] = {}
    for tensor, chunk in zip(parsed["outputs"], chunks(parsed["outputs"], rest), strict=True):
        datatype, shape = tensor["datatype"], tensor["shape"]
        if datatype == "BYTES":
            items = (
                tensor["data"]
                if chunk is None
                else [bytes(e).decode() for e in bytes_elements(chunk, math.prod(shape))]
            )
            found[tensor["name"]] = [str(x) for x in items]
        elif chunk is None:
            found[tensor["name"]] = np.asarray(tensor["data"], dtype=np.float64).reshape(shape)
        else:
            found[tensor["name"]] = np.frombuffer(chunk, dtype=_LITTLE[datatype]).reshape(shape)
    return found


# -- the stack ----------------------------------------------------------------------------
@dataclass
class Point:
    """One thing timed: a model, an encoding, its body and what its answer must hold."""

    model: str
    encoding: str
    target: Target
    request_bytes: int
    response_bytes: int = 0


@dataclass
class Stack:
    servers: dict[str, Server]
    base: str  # https://localhost:<port>, the name the certificate holds
    port: int
    ca: Path
    state: Path
    api_key: str


def iris_model(models: Path, rows: int) -> Path:
    """The iris demo pipeline with this bench's own settings: ``max_batch`` = ``rows``."""
    from scorer.dev.train import train_iris
    from scorer.repository import SETTINGS_FILE

    folder = train_iris(models)
    settings = folder / SETTINGS_FILE
    text, count = re.subn(r"(?m)^max_batch = \d+$", f"max_batch = {rows}", settings.read_text())
    if count != 1:
        raise RuntimeError(f"{settings}: no max_batch line to set")
    settings.write_text(text)
    return folder


def digits_repository(repo: Path) -> Path:
    """A repository holding the digits CNN: trained once (about a minute here), then kept."""
    from scorer.dev.digits import train_digits

    train_digits(repo)
    return repo


async def _api_key(state: Path) -> str:
    from gateway.identity import lifecycle
    from gateway.secretstore.localfile import LocalSecretStore

    store = LocalSecretStore(state / "secrets.json")
    issued = await lifecycle.create(store, owner=OWNER, scopes=sorted(SCOPES.values()))
    return issued.key


def write_policies(state: Path, iris_port: int, torch_port: int, rows: int) -> dict[str, Path]:
    """make bench's policies (a rate limit that counts and never refuses, the RS256
    issuer), with routes and scopes of this figure: iris takes ``rows`` rows of 4."""
    files = peers.write_gateway_policies(state, iris_port)
    files["routes"].write_text(
        f'[upstreams.cpu-scorer]\nurl = "http://127.0.0.1:{iris_port}"\nkind = "cpu"\n'
        "connect_timeout_s = 1.0\ntimeout_s = 5.0\n\n"
        f'[upstreams.torch-scorer]\nurl = "http://127.0.0.1:{torch_port}"\nkind = "gpu"\n'
        "connect_timeout_s = 1.0\ntimeout_s = 15.0\n\n"
        f'[models.iris]\nupstream = "cpu-scorer"\nmax_instances = {rows}\n'
        f"max_elements = {rows * 4}\nrow_elements = 4\n\n"
        '[models.digits]\nupstream = "torch-scorer"\nmax_instances = 64\nrow_elements = 1\n'
    )
    files["access"].write_text(
        "[scopes]\n" + "".join(f'"{scope}" = ["{m}"]\n' for m, scope in SCOPES.items())
    )
    return files


def start_stack(work: Path, digits_repo: Path, rows: int) -> Stack:
    state = work / "binary-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    logs = state / "logs"
    certs = peers.certificates(work / "certs")
    models = state / "models"
    iris_model(models, rows)
    peers.identity(state)  # the RS256 issuer's key the gateway's issuers file names
    api_key = asyncio.run(_api_key(state))
    servers: dict[str, Server] = {}
    try:
        servers["scorer"], iris_port = peers.start_scorer(models, logs)
        torch_port = free_port()
        servers["torch-scorer"] = start(
            "torch-scorer",
            [
                *(sys.executable, "-m", "scorer", "serve", "--repository", str(digits_repo)),
                *("--runtime", "torch", "--port", str(torch_port)),
            ],
            logs,
            peers.clean_env(),
            cwd=ROOT,
        )
        policies = write_policies(state, iris_port, torch_port, rows)
        servers["gateway"], port = peers.start_gateway(state, certs, policies, logs)
        wait_ready(servers["scorer"], f"http://127.0.0.1:{iris_port}/v2/health/ready")
        wait_ready(
            servers["torch-scorer"], f"http://127.0.0.1:{torch_port}/v2/health/ready", timeout_s=300
        )
        peers.ready_gateway(servers["gateway"], port, certs.ca_cert)
    except BaseException:
        stop(list(servers.values()))
        raise
    return Stack(servers, f"https://localhost:{port}", port, certs.ca_cert, state, api_key)


# -- points -------------------------------------------------------------------------------
def iris_rows(rows: int) -> np.ndarray[Any, Any]:
    from sklearn.datasets import load_iris

    return np.resize(load_iris().data.astype(np.float64), (rows, 4))


def iris_expected(models: Path, rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The pipeline's own answer, in this process (loaded through its digest check)."""
    from scorer.repository import read_model_settings
    from scorer.runtimes.sklearn import SklearnRuntime

    folder = models / "iris"
    runtime = SklearnRuntime.load(folder, read_model_settings(folder))
    return {
        "predict": [str(x) for x in runtime.estimator.predict(rows)],
        "predict_proba": runtime.estimator.predict_proba(rows),
    }


def digits_samples(digits_repo: Path, images: int) -> tuple[list[bytes], list[str]]:
    """``images`` held-out PNGs the digits model ships with, and their true labels."""
    samples = json.loads((digits_repo / "digits" / "samples.json").read_text())
    if not 1 <= images <= len(samples):
        raise ValueError(f"--images takes 1 to {len(samples)} (the model's held-out samples)")
    chosen = samples[:images]
    return [base64.b64decode(s["png"]) for s in chosen], [str(s["label"]) for s in chosen]


def make_points(stack: Stack, pngs: list[bytes], table: np.ndarray[Any, Any]) -> list[Point]:
    rows = len(table)
    bodies = stack.state / "bodies"
    bodies.mkdir()
    points = []
    for model in ("digits", "iris"):
        for encoding in ENCODINGS:
            binary = encoding == "binary"
            if model == "digits":
                items = pngs if binary else [base64.b64encode(p) for p in pngs]
                body, size = v2_request(
                    "image", "BYTES", [len(items)], items, DIGITS_OUTPUTS, binary=binary
                )
            else:
                body, size = v2_request(
                    "measurements", "FP64", [rows, 4], table, IRIS_OUTPUTS, binary=binary
                )
            path = bodies / f"{model}-{encoding}.body"
            path.write_bytes(body)
            extra: tuple[str, ...] = ()
            if size is not None:
                extra = (
                    f"Content-Type: {OCTET_STREAM}",
                    f"Inference-Header-Content-Length: {size}",
                )
            target = Target(
                f"{model}-{encoding}",
                f"https://127.0.0.1:{stack.port}/v2/models/{model}/infer",
                path,
                f"api-key: {stack.api_key}",
                extra,
            )
            points.append(Point(model, encoding, target, len(body)))
    return points


def ask(stack: Stack, point: Point) -> tuple[dict[str, Any], int, bool]:
    """One request of ``point`` (TLS verified against the dev CA): its outputs, the
    answer's body size, and whether it came in binary."""
    headers = {"api-key": stack.api_key, "content-type": "application/json"}
    for line in point.target.extra_headers:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(stack.ca)), timeout=30) as c:
        reply = c.post(
            f"{stack.base}/v2/models/{point.model}/infer",
            content=point.target.body.read_bytes(),
            headers=headers,
        )
    if reply.status_code != 200:
        raise RuntimeError(
            f"{point.target.name}: HTTP {reply.status_code} before timing: {reply.text[:300]}"
        )
    length = reply.headers.get(HEADER)
    return decode_response(reply.content, length), len(reply.content), length is not None


def check_answers(
    stack: Stack, points: list[Point], truth: list[str], table: np.ndarray[Any, Any]
) -> None:
    """Each point once before any timing: 200, the right predictions, the outputs in the
    encoding asked for. A refused request must never count as throughput."""
    expected = iris_expected(stack.state / "models", table)
    answers: dict[tuple[str, str], dict[str, Any]] = {}
    for point in points:
        outputs, size, binary = ask(stack, point)
        if binary != (point.encoding == "binary"):
            raise RuntimeError(f"{point.target.name}: outputs not in {point.encoding}")
        point.response_bytes = size
        answers[(point.model, point.encoding)] = outputs
    for encoding in ENCODINGS:
        iris = answers[("iris", encoding)]
        if iris["predict"] != expected["predict"] or not np.allclose(
            iris["predict_proba"], expected["predict_proba"], rtol=0, atol=1e-9
        ):
            raise RuntimeError(f"iris-{encoding}: not the pipeline's own predictions")
        digits = answers[("digits", encoding)]
        # Held-out samples: the CNN gets all but at most one right (its own tests' bound).
        predicted = digits["predict"]
        right = sum(p == t for p, t in zip(predicted, truth, strict=False))
        if len(predicted) != len(truth) or right < len(truth) - 1:
            raise RuntimeError(f"digits-{encoding}: {predicted} against {truth}")
    json_digits, bin_digits = answers[("digits", "json")], answers[("digits", "binary")]
    if json_digits["predict"] != bin_digits["predict"] or not np.allclose(
        json_digits["probabilities"], bin_digits["probabilities"], rtol=0, atol=1e-6
    ):
        raise RuntimeError("digits: the JSON and the binary answers differ")


# -- timing -------------------------------------------------------------------------------
@dataclass
class Timed:
    """One measured wrk run of a point, with what the gateway and the scorer spent."""

    model: str
    encoding: str
    rep: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    wire_bytes_per_response: float
    gateway_us: float
    scorer_us: float


def time_point(
    stack: Stack, point: Point, connections: int, seconds: float, warmup_s: float, rep: int
) -> Timed:
    if warmup_s > 0:
        load.wrk(point.target, connections, warmup_s)  # discarded
    servers = list(stack.servers.values())
    with measure(servers) as usage:
        result = load.wrk(point.target, connections, seconds)
    for server in servers:
        server.check_alive()
    scorer = "torch-scorer" if point.model == "digits" else "scorer"
    requests = max(result.requests, 1)
    timed = Timed(
        model=point.model,
        encoding=point.encoding,
        rep=rep,
        requests=result.requests,
        rps=round(result.rps, 1),
        p50_ms=round(result.p50_ms, 3),
        p99_ms=round(result.p99_ms, 3),
        errors=result.errors,
        wire_bytes_per_response=round(result.bytes_read / requests, 1),
        gateway_us=round(usage.cpu_s.get("gateway", 0.0) / requests * 1e6, 1),
        scorer_us=round(usage.cpu_s.get(scorer, 0.0) / requests * 1e6, 1),
    )
    say(
        f"  {point.target.name:<15} c{connections} rep {rep}: {timed.rps:8.1f} req/s  "
        f"p50 {timed.p50_ms:7.2f} ms  errors {timed.errors}"
    )
    return timed


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack, check every point's answer, time them interleaved; the payload."""
    digits_repo = digits_repository(args.digits_repo or args.work / "models-digits")
    started = time.monotonic()
    stack = start_stack(args.work, digits_repo, args.rows)
    timed: list[Timed] = []
    try:
        pngs, truth = digits_samples(digits_repo, args.images)
        table = iris_rows(args.rows)
        points = make_points(stack, pngs, table)
        check_answers(stack, points, truth, table)
        for rep in range(1, args.reps + 1):
            order = points if rep % 2 else list(reversed(points))
            for point in order:
                timed.append(
                    time_point(stack, point, args.connections, args.seconds, args.warmup, rep)
                )
    finally:
        stop(list(stack.servers.values()))  # the gateway drains its audit queue and signs
    return {
        "settings": _settings(args),
        "points": [
            {
                "model": p.model,
                "encoding": p.encoding,
                "request_bytes": p.request_bytes,
                "response_bytes": p.response_bytes,
            }
            for p in points
        ],
        "runs": [asdict(t) for t in timed],
        "audit": peers.verify_audit(stack.state),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("seconds", "warmup", "reps", "connections", "images", "rows")
    return {k: getattr(args, k) for k in keys}


# -- figures ------------------------------------------------------------------------------
WHAT = {
    "digits": "digits CNN, {images} PNGs a request via the gateway (TLS, API key): binary "
    "BYTES req/s ÷ base64 JSON req/s, outputs alike (wrk -c{connections})",
    "iris": "iris pipeline, {rows:,} rows a request via the gateway (TLS, API key): binary "
    "FP64 req/s ÷ JSON req/s, predict_proba alike (wrk -c{connections})",
}


def figures(payload: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """B10 (digits) and B11 (iris): binary ÷ JSON req/s, each rep's ratio, and beside it
    req/s, p50, bytes of request and answer, and CPU µs per request of each path."""
    settings = payload["settings"] if payload else _settings(parser().parse_args([]))
    out: dict[str, dict[str, Any]] = {}
    for model, fid in FIGURES.items():
        what = WHAT[model].format(**settings)
        if payload is None:
            out[fid] = {
                "value": None,
                "unit": "x",
                "what": what,
                "skipped": "not run (--no-binary)",
            }
            continue
        if "error" in payload:
            out[fid] = {"value": None, "unit": "x", "what": what, "error": payload["error"]}
            continue
        runs = {
            e: [r for r in payload["runs"] if r["model"] == model and r["encoding"] == e]
            for e in ENCODINGS
        }
        sizes = {p["encoding"]: p for p in payload["points"] if p["model"] == model}

        def mean(key: str, encoding: str, runs: dict[str, list[dict[str, Any]]] = runs) -> float:
            return round(statistics.fmean(r[key] for r in runs[encoding]), 3)

        per_rep = [
            round(b["rps"] / j["rps"], 3)
            for j, b in zip(runs["json"], runs["binary"], strict=True)
            if j["rps"]
        ]
        figure: dict[str, Any] = {
            "value": round(statistics.fmean(per_rep), 3) if per_rep else None,
            "unit": "x",
            "what": what,
            "per_rep": per_rep,
            **{f"{e}_rps": mean("rps", e) for e in ENCODINGS},
            **{f"{e}_p50_ms": mean("p50_ms", e) for e in ENCODINGS},
            "request_bytes": {e: sizes[e]["request_bytes"] for e in ENCODINGS},
            "response_bytes": {e: sizes[e]["response_bytes"] for e in ENCODINGS},
            "gateway_us": {e: mean("gateway_us", e) for e in ENCODINGS},
            "scorer_us": {e: mean("scorer_us", e) for e in ENCODINGS},
            "errors": sum(r["errors"] for e in ENCODINGS for r in runs[e]),
        }
        audit = payload["audit"]
        if figure["errors"] or not audit["verified"]:
            figure["error"] = (
                f"{figure['errors']} failed requests; audit verified: {audit['verified']}"
            )
        out[fid] = figure
    return out


def report(figs: dict[str, dict[str, Any]]) -> list[str]:
    """Lines for the table: each figure's paths side by side."""
    lines = []
    for model, fid in FIGURES.items():
        f = figs[fid]
        if "json_rps" not in f:
            why = f.get("skipped") or f.get("error", "")
            lines.append(f"{fid:<4} {model}: not measured: {why[-300:]}")
            continue
        lines.append(
            f"{fid:<4} {model}: JSON {f['json_rps']:,.1f} req/s (p50 {f['json_p50_ms']:.2f} ms, "
            f"{f['request_bytes']['json']:,} B in, {f['response_bytes']['json']:,} B out, "
            f"gateway {f['gateway_us']['json']:,.0f} µs, scorer {f['scorer_us']['json']:,.0f} µs)"
            f"; binary {f['binary_rps']:,.1f} req/s (p50 {f['binary_p50_ms']:.2f} ms, "
            f"{f['request_bytes']['binary']:,} B in, {f['response_bytes']['binary']:,} B out, "
            f"gateway {f['gateway_us']['binary']:,.0f} µs, "
            f"scorer {f['scorer_us']['binary']:,.0f} µs)"
        )
    return lines


def measured(args: argparse.Namespace) -> dict[str, Any]:
    """The payload of a run, or why there is none (a stack that did not start, a point
    whose answer was wrong): `make bench` reports the error and fails."""
    try:
        return run(args)
    except Exception as exc:
        return {"settings": _settings(args), "error": f"{type(exc).__name__}: {exc}"}


def parser() -> argparse.ArgumentParser:
    """This benchmark's options; bench/run.py builds its run from them too."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="each measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded run before each")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--images", type=int, default=8, help="PNGs per digits request")
    parser.add_argument("--rows", type=int, default=1000, help="rows per iris request")
    parser.add_argument(
        "--digits-repo",
        type=Path,
        help="a model repository holding the trained digits CNN (default: trained once "
        "into <work>/models-digits and kept)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--json", type=Path, help="default: <work>/binary.json")
    parser.add_argument("--quick", action="store_true", help="1s runs, one repetition (smoke)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.reps = 1.0, 1.0, 1
    load.require("wrk")
    payload = measured(args)
    payload["figures"] = figures(payload)
    print("\n".join(report(payload["figures"])))
    print(json.dumps(payload, ensure_ascii=False))
    out = args.json or args.work / "binary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    return 1 if any("error" in f for f in payload["figures"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
