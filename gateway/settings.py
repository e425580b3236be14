"""Gateway settings: one frozen object built in the entry point and passed down.

Every value can come from the environment (prefix ``SCOREGATE_``); unknown keys are
rejected so a mistyped setting fails the start instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

KIB = 1024
MIB = 1024 * KIB
REPO_ROOT = Path(__file__).resolve().parent.parent


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCOREGATE_", extra="forbid", frozen=True)

    # Where generated state lives on a laptop: certificates, secret store, audit log, models.
    state_dir: Path = Path("var")

    # Listener.
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=1, le=65535)
    tls_cert: Path | None = None  # default: <state_dir>/certs/gateway.pem
    tls_key: Path | None = None  # default: <state_dir>/certs/gateway.key
    tls_profile: Literal["intermediate", "modern"] = "intermediate"
    # How often the certificate files are checked; renewed files (the CSI driver's
    # rotation) are served to new handshakes without a restart (serving/certwatch.py).
    tls_reload_interval_s: float = Field(default=30.0, gt=0, le=3600)
    hsts_max_age_s: int = Field(default=63_072_000, ge=0)  # two years, Mozilla's advice

    # Connection and request limits (units in the names).
    handshake_timeout_s: float = Field(default=5.0, gt=0)  # TLS handshake
    # Idle connection, and also the whole request head (HTTP/1.1): Hypercorn keeps the idle
    # timer running until the headers are complete, so slowloris trickling cannot reset it.
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: int = Field(default=10, gt=0)  # any single read from the socket
    body_timeout_s: float = Field(default=10.0, gt=0)  # the whole body: 408 after it
    max_header_bytes: int = Field(default=16 * KIB, ge=1 * KIB)
    # What reads HTTP/1.1 requests: llhttp (httptools), or h11 as the fallback; the same
    # answers, proven by tests/serving/test_http1_differential.py (SECURITY.md).
    http1_parser: Literal["llhttp", "h11"] = "llhttp"
    max_body_bytes: int = Field(default=1 * MIB, ge=1)
    max_response_bytes: int = Field(default=8 * MIB, ge=1)
    # Answers being received from every scorer together (the pod's limit is 512 MiB).
    upstream_buffer_bytes: int = Field(default=128 * MIB, ge=1 * MIB)
    trusted_proxy_hops: int = Field(default=0, ge=0, le=5)
    # Bulkheads (gateway/ratelimit/bulkhead.py): requests being forwarded at one moment,
    # per model (below an upstream's connections, so its other models keep a share) and
    # per caller; past either, 503 / 429 at once with Retry-After.
    max_in_flight_per_model: int = Field(default=48, ge=1)
    max_in_flight_per_principal: int = Field(default=32, ge=1)

    # TLS to the scorers (routes with https:// URLs): the CA that signs their certificates,
    # and the gateway's own client certificate where they require mutual TLS.
    upstream_ca: Path | None = None
    upstream_client_cert: Path | None = None
    upstream_client_key: Path | None = None

    # Policies.
    routes_file: Path = REPO_ROOT / "policies" / "routes.toml"
    access_policy_file: Path = REPO_ROOT / "policies" / "access.toml"
    jwt_issuers_file: Path = REPO_ROOT / "policies" / "issuers.toml"

    # Secrets.
    secret_store: Literal["local", "keyvault"] = "local"  # noqa: S105 - a backend name
    # Key Vault: https://<name>.vault.azure.net; the credential is DefaultAzureCredential
    # (workload identity on AKS). Turn the challenge check off only for a test vault on
    # localhost, whose challenge cannot name vault.azure.net.
    keyvault_url: str | None = None
    keyvault_verify_challenge_resource: bool = True
    local_store_path: Path | None = None  # default: <state_dir>/secrets.json
    key_refresh_interval_s: float = Field(default=2.0, gt=0)
    # Readiness fails when the last good key refresh is older than this.
    key_max_staleness_s: float = Field(default=300.0, gt=0)

    # Rate limits: policy file, storage URI (memory:// or async+redis://host:port), and
    # what happens when that storage fails (see gateway/ratelimit/limiter.py).
    rate_limit_policy_file: Path = REPO_ROOT / "policies" / "ratelimits.toml"
    rate_limit_storage: str = "memory://"
    # A Redis that requires authentication (an ACL user, or the default user with a
    # password). The password comes from a file (on AKS the CSI driver's mount of a Key
    # Vault secret), never from the URI or the environment, which process listings, crash
    # reports and `kubectl describe` show (OWASP ASVS 13.3.1: secrets in a secrets manager).
    rate_limit_storage_username: str | None = None
    rate_limit_storage_password_file: Path | None = None
    rate_limit_on_storage_failure: Literal["memory", "closed", "open"] = "memory"
    # In-process counters (memory://, and the Redis fallback): one per caller and limit;
    # at the cap the ones closest to expiry are forgotten (SECURITY.md, known limits).
    rate_limit_memory_max_keys: int = Field(default=500_000, ge=1_000)

    # Audit. The sink: "file" (a rotated, hash-chained file chain), "stdout" (JSON lines
    # for a log collector), or an Azure Blob Storage container's URL
    # (https://<account>.blob.core.windows.net/<container>): sealed into a local spool,
    # then shipped to append blobs with DefaultAzureCredential (gateway/audit/blobstore.py).
    audit_sink: str = Field(default="file", pattern=r"^(file|stdout|https://[^\s?#]+)$")
    audit_path: Path | None = None  # default: <state_dir>/audit/audit.jsonl
    audit_spool_dir: Path | None = None  # default: <state_dir>/audit-spool
    # What the spool may hold while the store is unreachable; past it the trail fails as
    # audit_on_failure says (closed: 503).
    audit_spool_max_bytes: int = Field(default=256 * MIB, ge=1 * MIB)
    audit_ship_interval_s: float = Field(default=1.0, gt=0, le=60)
    audit_queue_size: int = Field(default=10_000, ge=1)
    audit_fsync: bool = False
    audit_rotate_bytes: int = Field(default=64 * MIB, ge=4 * KIB)
    audit_rotate_interval_s: float = Field(default=86_400.0, gt=0)
    audit_checkpoint_every: int = Field(default=1000, ge=1)
    audit_checkpoint_interval_s: float = Field(default=60.0, gt=0)
    # How long the writer waits for more records before a write. Each answer waits for
    # its record to be written (write-ahead), so this adds to every answer's latency;
    # under load, batches form without it while the writer thread is busy.
    audit_linger_ms: float = Field(default=0.0, ge=0, le=1000)
    # When the trail cannot take a record (queue full, sink failing): "closed" answers 503;
    # "open" serves anyway, records taking free queue room or, past it, being dropped
    # with an error log line naming the request. Only choose "open" knowingly.
    audit_on_failure: Literal["closed", "open"] = "closed"

    log_level: str = "WARNING"
    log_format: Literal["json", "text"] = "json"  # operational logs on stderr

    # -- metrics (internal listener; 0 turns it off) --------------------------------------
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9100, ge=0, le=65535)

    @property
    def cert_path(self) -> Path:
        return self.tls_cert or self.state_dir / "certs" / "gateway.pem"

    @property
    def key_path(self) -> Path:
        return self.tls_key or self.state_dir / "certs" / "gateway.key"

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "certs" / "ca.pem"

    @property
    def store_path(self) -> Path:
        return self.local_store_path or self.state_dir / "secrets.json"

    @property
    def audit_file(self) -> Path:
        return self.audit_path or self.state_dir / "audit" / "audit.jsonl"

    @property
    def audit_store_url(self) -> str | None:
        """The Blob Storage container the trail ships to, if that is the sink."""
        return self.audit_sink if self.audit_sink.startswith("https://") else None

    @property
    def audit_spool(self) -> Path:
        return self.audit_spool_dir or self.state_dir / "audit-spool"


# Variables under our prefix that are not gateway settings but are ours all the same:
# `scoregate score`'s credentials (by exact name, so a typo of a setting starting alike
# is still caught), and the scorer's settings.
_OTHER_OWN_VARIABLES = ("SCOREGATE_API_KEY", "SCOREGATE_JWT")
_OTHER_OWN_PREFIXES = ("SCOREGATE_SCORER_",)


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """``SCOREGATE_*`` variables that match no setting: a typo must not pass silently.

    pydantic-settings rejects unknown constructor arguments but ignores unknown
    environment variables, so the entry point asks this before starting.
    """
    known = {f"SCOREGATE_{name.upper()}" for name in GatewaySettings.model_fields}
    return sorted(
        name
        for name in environ
        if name.startswith("SCOREGATE_")
        and name not in known
        and name not in _OTHER_OWN_VARIABLES
        and not name.startswith(_OTHER_OWN_PREFIXES)
    )
