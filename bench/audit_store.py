"""What the audit store costs: records per second, bytes per record, a month in Blob Storage.

    make bench-audit-store [AUDIT_ARGS="--records 200000"]

Real parts: the gateway's AuditTrail sealing real request records into the BlobSink's
spool, shipped to Azurite (the Blob Storage emulator, over TLS with OAuth) by the same
shipper a gateway runs. Printed:
- records/s into the spool (what the request path waits for: write-ahead) and records/s
  shipped to the store, measured on this machine, Azurite beside it;
- bytes per record and per append (block), so appends per record;
- a month at a stated traffic level, priced with the list prices given on the command
  line (defaults: Azure Blob Storage, hot tier, LRS, pay-as-you-go, West Europe, as
  published when this was written; check the current ones).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certs.authority import CertPaths, create_ca, issue
from gateway.audit.blobstore import BlobSink
from gateway.audit.record import AuditEvent, utc_timestamp
from gateway.audit.trail import AuditTrail
from tests.azurite import AzuriteServer, container_client

SECONDS_PER_MONTH = 30 * 86_400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event(i: int) -> AuditEvent:
    """A record the size of a real one: an API-key request to iris, answered."""
    return AuditEvent(
        time=utc_timestamp(),
        request_id=secrets.token_hex(16),
        client_request_id=None,
        client="203.0.113.7",
        method="POST",
        path="/v2/models/iris/infer",
        route="infer_v2",
        model="iris",
        subject="batch-client",
        credential="api_key",
        key_id="abcdefghijklmnop",
        key_version="3",
        decision="allow",
        reason="ok",
        status=200,
        latency_ms=1.234,
        bytes_in=180,
        bytes_out=96,
        payload_sha256=secrets.token_hex(32),
        instances=1,
        limiter="shared",
    )


async def measure(url: str, ca: Path, spool: Path, records: int) -> dict[str, float]:
    container = container_client(url, ca)
    await container.create_container()
    sink = BlobSink(container, spool, max_spool_bytes=1 << 34, ship_interval_s=0.05)
    await sink.start()
    trail = AuditTrail(sink, queue_size=records + 10)
    writer = asyncio.create_task(trail.run())
    started = time.perf_counter()
    waits = [trail.record(event(i), reserved=False) for i in range(records)]
    await asyncio.gather(*(w for w in waits if w is not None))
    spooled_s = time.perf_counter() - started
    shipping = time.perf_counter()
    await sink.flush(600)
    shipped_s = time.perf_counter() - shipping
    writer.cancel()
    stored_bytes = sink.appended_bytes  # the records and the trail's checkpoints
    blocks = sink.appended_blocks
    sink.close()
    await sink.aclose()
    return {
        "spooled_per_s": records / spooled_s,
        "shipped_per_s": records / shipped_s,
        "bytes_per_record": stored_bytes / records,
        "records_per_block": records / max(blocks, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--traffic-rps", type=float, default=100.0, help="requests/s, all day")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--ship-interval-s", type=float, default=1.0)
    parser.add_argument("--price-gb-month", type=float, default=0.0196, help="USD, hot LRS")
    parser.add_argument("--price-10k-writes", type=float, default=0.065, help="USD")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scoregate-bench-audit-"))
    try:
        authority = CertPaths(work / "pki")
        create_ca(authority)
        issue(authority, "gateway")
        azurite = AzuriteServer(
            authority.cert("gateway"), authority.key("gateway"), free_port(), work / "azurite"
        )
        azurite.start()
        try:
            figures = asyncio.run(
                measure(
                    azurite.container_url("audit"), authority.ca_cert, work / "spool", args.records
                )
            )
        finally:
            azurite.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_record = figures["bytes_per_record"]
    month_records = args.traffic_rps * SECONDS_PER_MONTH
    month_gb = month_records * per_record / 1e9
    # One append per replica per shipping interval when traffic is steady (a batch holds
    # what arrived meanwhile), or fewer when an interval's records exceed one block.
    appends = args.replicas * SECONDS_PER_MONTH / args.ship_interval_s
    storage_usd = month_gb * args.price_gb_month
    writes_usd = appends / 10_000 * args.price_10k_writes
    spooled, shipped = figures["spooled_per_s"], figures["shipped_per_s"]
    print(f"audit store on this machine ({args.records} records, Azurite over TLS):")
    print(f"  into the spool (the answer waits for this): {spooled:>10,.0f} records/s")
    print(f"  shipped to the store:                       {shipped:>10,.0f} records/s")
    print(f"  bytes per record:                           {per_record:>10,.0f}")
    print(f"  records per append (4 MiB blocks):          {figures['records_per_block']:>10,.0f}")
    print(
        f"a month at {args.traffic_rps:g} requests/s on {args.replicas} replicas, shipping every "
        f"{args.ship_interval_s:g} s:"
    )
    print(f"  {month_records:,.0f} records, {month_gb:,.1f} GB added this month")
    print(
        f"  storage  ${storage_usd:,.2f} for each month it is kept (at ${args.price_gb_month}/GB)"
    )
    print(f"  appends  {appends:,.0f}: ${writes_usd:,.2f} (at ${args.price_10k_writes}/10k writes)")


if __name__ == "__main__":
    main()
