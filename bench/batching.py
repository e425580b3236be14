"""B6: the torch scorer's dynamic batching, measured side by side (BENCHMARKS.md).

    python bench/batching.py [--models digits,resnet50] [--concurrency 1,8,32,64]
                             [--seconds 8] [--json var/bench/batching.json] [--quick]

For each model, in one run, images per second:
- **ceiling**: the same model's raw batched forward pass in a loop, in process, at the
  model's batch size (no HTTP, no JSON, no image decoding): the most the device can do;
- **batched**: the real scorer process with dynamic batching, driven by N concurrent
  clients that each send one base64 image per request (as the reference architecture's
  clients did) in a closed loop;
- **batch-1**: the same scorer and model with a batch size of 1 (one forward pass per
  request, the reference architecture's way).
It prints batched ÷ ceiling and batched ÷ batch-1 per concurrency, the mean rows per
forward pass (from the scorer's own metrics), as a table and as JSON. On a GPU machine the
models run on CUDA (device "auto"); here on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.peers import clean_env  # noqa: E402
from bench.procs import Server, free_port, start, stop, wait_ready  # noqa: E402
from scorer.hazmat import file_sha256  # noqa: E402
from scorer.repository import SETTINGS_FILE, read_model_settings  # noqa: E402
from scorer.runtimes.pytorch import TorchRuntime  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Row:
    model: str
    device: str
    concurrency: int
    batch_size: int
    ceiling_ips: float
    batched_ips: float
    batch1_ips: float
    batched_p50_ms: float
    batch1_p50_ms: float
    mean_rows_per_pass: float
    errors: int

    @property
    def of_ceiling(self) -> float:
        return self.batched_ips / self.ceiling_ips if self.ceiling_ips else 0.0

    @property
    def of_batch1(self) -> float:
        return self.batched_ips / self.batch1_ips if self.batch1_ips else 0.0


# -- models -----------------------------------------------------------------------------
def _write_settings(folder: Path, body: str, batch_size: int, delay_ms: float) -> None:
    (folder / SETTINGS_FILE).write_text(
        body
        + f"\n[batching]\nmax_batch_size = {batch_size}\nmax_delay_ms = {delay_ms}\n"
        + "max_queue = 4096\n"
    )


def _twin(repo: Path, name: str) -> None:
    """``<name>-b1``: the same artifact and settings, batch size 1 (one image per pass)."""
    folder, twin = repo / name, repo / f"{name}-b1"
    twin.mkdir()
    shutil.copy(folder / "model.pt2", twin / "model.pt2")
    text = (folder / SETTINGS_FILE).read_text().replace(f'name = "{name}"', f'name = "{name}-b1"')
    text = re.sub(r"max_batch_size = \d+", "max_batch_size = 1", text)
    text = re.sub(r"max_delay_ms = [\d.]+", "max_delay_ms = 0", text)
    (twin / SETTINGS_FILE).write_text(text)


def build_digits(repo: Path, batch_size: int) -> tuple[str, str]:
    from scorer.dev.digits import train_digits

    folder = train_digits(repo)
    text = (folder / SETTINGS_FILE).read_text()
    text = re.sub(r"max_batch_size = \d+", f"max_batch_size = {batch_size}", text)
    (folder / SETTINGS_FILE).write_text(text)
    _twin(repo, "digits")
    sample = json.loads((folder / "samples.json").read_text())[0]["png"]
    return "digits", sample


def build_resnet50(repo: Path, batch_size: int) -> tuple[str, str]:
    from bench.resnet import ResNet50

    folder = repo / "resnet50"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = ResNet50().eval()
    program = torch.export.export(
        model,
        (torch.zeros(2, 3, 224, 224),),
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
    )
    torch.export.save(program, str(folder / "model.pt2"))
    _write_settings(
        folder,
        f"""name = "resnet50"
runtime = "torch"
artifact = "model.pt2"
format = "torch-export"
sha256 = "{file_sha256(folder / "model.pt2")}"
max_batch = 64
device = "auto"

[input]
name = "image"
datatype = "FP32"
shape = [-1, 3, 224, 224]

[image]
width = 224
height = 224
mode = "RGB"
mean = {list(IMAGENET_MEAN)}
std = {list(IMAGENET_STD)}
""",
        batch_size,
        delay_ms=5.0,
    )
    _twin(repo, "resnet50")
    # A photo-like 256x256 JPEG (smooth gradients and noise), resized by the scorer.
    yy, xx = np.mgrid[0:256, 0:256]
    rng = np.random.default_rng(0)
    pixels = np.stack([xx, yy, (xx + yy) // 2], axis=-1) + rng.integers(0, 32, (256, 256, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return "resnet50", base64.b64encode(buffer.getvalue()).decode()


BUILDERS = {"digits": build_digits, "resnet50": build_resnet50}


# -- measurements -------------------------------------------------------------------------
def ceiling(folder: Path, batch_size: int, seconds: float) -> tuple[float, str]:
    """Rows per second of the raw batched forward pass, in this process."""
    runtime = TorchRuntime.load(folder, read_model_settings(folder))
    rows = np.random.default_rng(0).standard_normal(
        runtime._example(batch_size).shape, dtype=np.float32
    )
    runtime.predict(rows, runtime.outputs[:1])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        runtime.predict(rows, runtime.outputs[:1])  # includes the copy back to the host
        done += batch_size
    return done / (time.perf_counter() - started), str(runtime.device)


async def drive(
    url: str, body: bytes, concurrency: int, seconds: float, warmup_s: float
) -> tuple[float, float, int]:
    """Images per second and p50 latency (ms) of ``concurrency`` closed-loop clients."""
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.perf_counter() + warmup_s + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            async with session.post(
                url, data=body, headers={"content-type": "application/json"}
            ) as r:
                await r.read()
                ok = r.status == 200
            if measuring:
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(concurrency)]
        await asyncio.sleep(warmup_s)
        measuring = True
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    p50 = statistics.median(latencies) * 1000 if latencies else 0.0
    return len(latencies) / elapsed, p50, errors


def scorer_passes(base: str, model: str) -> tuple[float, float]:
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as reply:  # noqa: S310 - loopback
        text = reply.read().decode()
    found = []
    for series in ("count", "sum"):
        match = re.search(rf'scoregate_scorer_batch_rows_{series}\{{model="{model}"\}} (\S+)', text)
        found.append(float(match.group(1)) if match else 0.0)
    return found[0], found[1]


def start_scorer(repo: Path, port: int, logs: Path) -> Server:
    """The torch scorer on ``repo``, ready (its models warmed up)."""
    server = start(
        "torch-scorer",
        [
            *(sys.executable, "-m", "scorer", "serve", "--repository", str(repo)),
            *("--runtime", "torch", "--port", str(port)),
        ],
        logs,
        clean_env(),
        cwd=ROOT,
    )
    wait_ready(server, f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=300)
    return server


def measure_model(name: str, args: argparse.Namespace, work: Path) -> list[Row]:
    repo = work / name
    repo.mkdir()
    model, image = BUILDERS[name](repo, args.batch_size)
    ceiling_ips, device = ceiling(repo / model, args.batch_size, args.seconds)
    print(f"{model}: ceiling {ceiling_ips:,.1f} images/s on {device}", file=sys.stderr)
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    ).encode()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_scorer(repo, port, work / "logs")
    rows = []
    try:
        for concurrency in args.concurrency:
            before = scorer_passes(base, model)
            # Interleaved, so that drift on a shared machine hits both alike.
            batched, batched_p50, errors = asyncio.run(
                drive(f"{base}/v2/models/{model}/infer", body, concurrency, args.seconds, 1.0)
            )
            after = scorer_passes(base, model)
            one, one_p50, errors1 = asyncio.run(
                drive(f"{base}/v2/models/{model}-b1/infer", body, concurrency, args.seconds, 1.0)
            )
            passes = after[0] - before[0]
            row = Row(
                model=model,
                device=device,
                concurrency=concurrency,
                batch_size=args.batch_size,
                ceiling_ips=round(ceiling_ips, 1),
                batched_ips=round(batched, 1),
                batch1_ips=round(one, 1),
                batched_p50_ms=round(batched_p50, 2),
                batch1_p50_ms=round(one_p50, 2),
                mean_rows_per_pass=round((after[1] - before[1]) / passes, 2) if passes else 0.0,
                errors=errors + errors1,
            )
            print(
                f"  c={concurrency:<3} batched {batched:,.1f}/s  batch-1 {one:,.1f}/s  "
                f"rows/pass {row.mean_rows_per_pass}",
                file=sys.stderr,
            )
            rows.append(row)
    finally:
        stop([server])
    return rows


def report(rows: list[Row]) -> str:
    head = (
        f"{'model':<10} {'device':<7} {'conc':>4} {'ceiling/s':>10} {'batched/s':>10} "
        f"{'batch-1/s':>10} {'÷ceiling':>8} {'÷batch-1':>8} {'rows/pass':>9} {'p50 ms':>8}"
    )
    lines = ["B6: dynamic batching ÷ raw batched forward (ceiling) and ÷ batch size 1", head]
    for r in rows:
        lines.append(
            f"{r.model:<10} {r.device:<7} {r.concurrency:>4} {r.ceiling_ips:>10,.1f} "
            f"{r.batched_ips:>10,.1f} {r.batch1_ips:>10,.1f} {r.of_ceiling:>8.2f} "
            f"{r.of_batch1:>8.2f} {r.mean_rows_per_pass:>9.2f} {r.batched_p50_ms:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,resnet50")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "batching.json")
    parser.add_argument("--quick", action="store_true", help="digits only, short runs (smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.concurrency, args.seconds = "digits", "1,16", 1.0
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(BUILDERS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(BUILDERS)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="scoregate-bench-") as tmp:
        for name in models:
            rows += measure_model(name, args, Path(tmp))
    print(report(rows))
    payload = {
        "figure": "B6",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "rows": [asdict(r) | {"of_ceiling": r.of_ceiling, "of_batch1": r.of_batch1} for r in rows],
    }
    print(json.dumps(payload))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
