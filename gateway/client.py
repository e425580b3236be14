"""A small HTTPS client for `scoregate score` and the demo: trusts only the given CA."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from serving.tls import client_context


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    url: str,
    *,
    ca: Path,
    method: str = "GET",
    payload: Any = None,
    api_key: str | None = None,
    bearer: str | None = None,
    timeout_s: float = 10.0,
) -> Reply:
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname is None:
        raise ValueError("only https:// URLs are supported")
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, context=client_context(ca), timeout=timeout_s
    )
    headers = {"accept": "application/json"}
    body = None
    if payload is not None:
        body = json.dumps(payload).encode()
        headers["content-type"] = "application/json"
    if api_key is not None:
        headers["api-key"] = api_key
    if bearer is not None:
        headers["authorization"] = f"Bearer {bearer}"
    try:
        conn.request(method, parts.path or "/", body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode("utf-8", "replace")
    return Reply(response.status, reply_headers, decoded)
