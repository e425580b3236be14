"""Scorer process settings: built once in the entry point and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KIB = 1024
MIB = 1024 * KIB


class ScorerSettings(BaseSettings):
    """Settings of one scorer process (env prefix ``SCOREGATE_SCORER_``)."""

    model_config = SettingsConfigDict(env_prefix="SCOREGATE_SCORER_", extra="forbid", frozen=True)

    repository: Path = Path("var/models")
    # Which runtimes this process serves: the CPU scorer takes sklearn, the GPU scorer torch.
    runtimes: tuple[str, ...] = ("sklearn",)
    host: str = "127.0.0.1"
    port: int = Field(default=9001, ge=1, le=65535)
    max_body_bytes: int = Field(default=4 * MIB, ge=1)
    keep_alive_timeout_s: float = Field(default=75.0, gt=0)
    # What reads HTTP/1.1 requests: llhttp (httptools), or h11 as the fallback (the same
    # answers: tests/serving/test_http1_differential.py).
    http1_parser: Literal["llhttp", "h11"] = "llhttp"
    # Unbatched models whose measured prediction time is at most this run on the event
    # loop instead of a worker thread (the hand-off costs more than they do); 0: always
    # in a thread. It bounds how long one prediction may hold up other requests.
    inline_predict_us: float = Field(default=1000.0, ge=0, le=100_000)
    # TLS for the gateway → scorer hop (optional); with tls_client_ca, mutual TLS: only
    # clients with a certificate from that CA (the gateway's) complete the handshake.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # How often those files are checked; renewed ones serve new handshakes without a
    # restart (serving/certwatch.py).
    tls_reload_interval_s: float = Field(default=30.0, gt=0, le=3600)
    # Prometheus metrics on a listener of their own (0: off), so the monitoring agent that
    # scrapes them is let in to this port alone, never to the scoring port
    # (SECURITY-CATALOG: metrics are not on a serving listener; OWASP API9).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    log_level: str = "WARNING"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _tls_complete(self) -> ScorerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self
