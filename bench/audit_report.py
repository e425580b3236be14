"""`scoregate audit report` on a generated trail of a busy replica: wall time and peak RSS.

    .venv/bin/python bench/audit_report.py --records 1000000 [--html]

The trail is a month (30 days) of one replica's traffic, sealed and signed as the gateway
writes it (`gateway.audit.record.seal`, an Ed25519 checkpoint every 1000 records, a probes
record a minute), in 64 MiB files: 400 principals (a few busy, most quiet), five models,
denials (scope, rate limit), bursts of failed authentication from thousands of addresses
(what a top list must stay bounded under), keys that rotate halfway through. It is kept in
var/bench/audit-report/<records>/ for the next run. The report runs as the command line
runs it, in its own process, measured with getrusage (peak RSS) and a monotonic clock;
the figures go to stdout as JSON and to var/bench/audit-report/<records>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.audit import signing
from gateway.audit.record import GENESIS, seal
from gateway.audit.sinks import rotated_name
from gateway.secretstore.localfile import LocalSecretStore

ROOT = Path(__file__).resolve().parents[1]
MONTH_S = 30 * 86400
ROTATE_BYTES = 64 * 1024 * 1024
CHECKPOINT_EVERY = 1000
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
NODE = "gateway-7f9c-abcde"


class Writer:
    """Sealed lines into 64 MiB files, a signed checkpoint every 1000: the gateway's trail."""

    def __init__(self, trail: Path, signer: signing.CheckpointSigner) -> None:
        self.trail, self.signer = trail, signer
        self.seq, self.prev, self.since, self.first = 0, GENESIS, 0, 1
        self.out = (trail / "audit.jsonl").open("wb")
        self.written = 0

    def _line(self, fields: dict[str, object]) -> None:
        self.seq += 1
        line, self.prev = seal(fields, self.seq, self.prev)
        self.out.write(line)
        self.written += len(line)

    def emit(self, fields: dict[str, object], now: str) -> None:
        self._line(fields)
        self.since += 1
        if self.since >= CHECKPOINT_EVERY:
            self.checkpoint(now)

    def checkpoint(self, now: str) -> None:
        fields = self.signer.checkpoint(
            time=now,
            node=NODE,
            from_seq=self.first,
            to_seq=self.seq,
            head=self.prev,
            every=CHECKPOINT_EVERY,
        )
        self._line(fields)
        self.since, self.first = 0, self.seq + 1
        if self.written >= ROTATE_BYTES:  # rotated after a checkpoint, by size
            self.out.close()
            (self.trail / "audit.jsonl").rename(self.trail / rotated_name(self.seq))
            self.out = (self.trail / "audit.jsonl").open("wb")
            self.written = 0

    def close(self, now: str) -> None:
        if self.since:
            self.checkpoint(now)  # the closing checkpoint of a drained writer
        self.out.close()


def generate(folder: Path, records: int, seed: int = 19) -> None:
    """A month of traffic in ``records`` requests, chained and signed like the gateway's."""
    rng = random.Random(seed)  # noqa: S311 - made-up traffic, not secrets
    signer = asyncio.run(
        signing.load_signer(LocalSecretStore(folder / "secrets.json"), create=True)
    )
    if signer is None:
        raise SystemExit("no audit signing key")
    trail = folder / "audit"
    trail.mkdir(parents=True, exist_ok=True)
    writer = Writer(trail, signer)
    principals = [f"client-{i:03d}" for i in range(400)]
    everyone = range(400)
    weights = [1 / (i + 1) for i in everyone]  # Zipf: a few busy clients, a long tail
    models = ["iris", "digits", "wine", "churn", "fraud"]
    step = MONTH_S / records
    second, stamp, last_probe, now = -1, "", 0.0, ""
    for i in range(records):
        offset = i * step
        if int(offset) != second:
            second = int(offset)
            stamp = (START + dt.timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S")
        now = f"{stamp}.{int((offset - second) * 1000):03d}Z"
        j = rng.choices(everyone, weights)[0] if i % 64 else i % 400
        who = principals[j]
        roll = rng.random()
        fields: dict[str, object] = {
            "type": "request",
            "time": now,
            "request_id": f"{i:032x}",
            "client_request_id": None,
            "client": f"10.0.{j % 200}.{j // 200 + 7}",
            "method": "POST",
            "path": "/v2/models/m/infer",
            "route": "infer",
            "model": models[j % 5] if roll > 0.1 else rng.choice(models),
            "subject": who,
            "credential": "api_key",
            "key_id": f"key-{who}",
            # Keys rotate halfway; a tenth of the clients stay on the old generation.
            "key_version": "gen-2" if i > records // 2 and j % 10 else "gen-1",
            "decision": "allow",
            "reason": "ok",
            "status": 200,
            "latency_ms": round(rng.lognormvariate(1.2, 0.6), 3),
            "bytes_in": 120,
            "bytes_out": 80,
            "payload_sha256": f"{rng.getrandbits(256):064x}",
            "instances": 1,
            "limiter": "shared",
            "node": NODE,
        }
        if roll < 0.02:
            fields |= {"decision": "deny", "reason": "scope_missing", "status": 403}
        elif roll < 0.03:
            fields |= {"decision": "deny", "reason": "rate_limit_principal", "status": 429}
        elif roll < 0.035:  # failed authentication from many addresses, in bursts
            fields |= {
                "decision": "deny",
                "reason": "api_key_unknown",
                "status": 401,
                "subject": None,
                "credential": None,
                "key_id": None,
                "key_version": None,
                "model": None,
                "client": f"203.0.{i // 2000 % 250}.{rng.randrange(256)}",
            }
        writer.emit(fields, now)
        if offset - last_probe >= 60:  # the writer's probe summary, once a minute
            last_probe = offset
            probes = {"live 200": 6, "ready 200": 6}
            writer.emit(
                {"type": "probes", "time": now, "node": NODE, "since": now, "counts": probes},
                now,
            )
    writer.close(now)


def measure(folder: Path, html: bool) -> dict[str, object]:
    out = folder / "report.html"
    command = [sys.executable, "-m", "gateway", "--state-dir", str(folder), "audit", "report"]
    command += ["--html", str(out)] if html else ["--json"]
    started = time.monotonic()
    # Our own command line, no outside input.
    done = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, check=False, cwd=ROOT
    )
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"report failed ({done.returncode}): {done.stderr[-2000:]}")
    banner = done.stdout.splitlines()[0] if html else json.loads(done.stdout)["banner"]
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "banner": banner,
        **({"html_bytes": out.stat().st_size} if html else {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--html", action="store_true", help="write the HTML page (else JSON)")
    parser.add_argument("--keep", action="store_true", help="keep the generated trail")
    args = parser.parse_args()
    base = ROOT / "var" / "bench" / "audit-report"
    folder = base / str(args.records)
    if not (folder / "audit" / "audit.jsonl").exists():
        started = time.monotonic()
        generate(folder, args.records)
        sys.stderr.write(
            f"generated {args.records:,} records in {time.monotonic() - started:.0f} s\n"
        )
    trail_bytes = sum(f.stat().st_size for f in (folder / "audit").iterdir())
    figures = {
        "records": args.records,
        "trail_mib": round(trail_bytes / 2**20),
        **measure(folder, args.html),
    }
    figures["us_per_record"] = round(float(str(figures["wall_s"])) * 1e6 / args.records, 1)
    (base / f"{args.records}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    if not args.keep:
        for path in (folder / "audit").iterdir():
            path.unlink()
        (folder / "audit").rmdir()
    return 0


if __name__ == "__main__":
    os.environ.pop("SCOREGATE_AUDIT_SINK", None)
    raise SystemExit(main())
