"""The served TLS certificate follows its files: a renewed chain is served to new
handshakes without a restart, and a broken one never replaces the working one.

    files ─ poll every interval_s: stat changed? ─▶ content changed? ─▶ build (serving.tls)
                                                                          │
                  refused (unparsable, key mismatch, outside its validity):◀┤
                  keep serving the old one, log, count; retry next poll     ▼
    Hypercorn's context ── sni_callback, each handshake ──▶ ssl_object.context = current

**The swap.** Hypercorn takes one `SSLContext` at start (`Config.create_ssl_context`,
called once) and asyncio/uvloop wrap each new connection in it. That listening context
carries an `sni_callback`, which OpenSSL calls on every ClientHello (with or without SNI;
the server name is then None) before it picks a certificate; the callback sets
`SSLObject.context` to the latest good context (CPython: "a typical use of this callback
is to change the SSLSocket.context attribute", `SSLObject.context` is settable alike).
That is OpenSSL's `SSL_set_SSL_CTX`: the connection takes the new context's certificate,
key, chain, trust store (the client CA for mutual TLS) and ALPN callback; its protocol
versions, suites and options (no tickets, no compression, no renegotiation) were copied
from the listening context when the connection began. Both contexts come from the same
`serving.tls` function, so they agree. Connections already open keep what they began
with, and nothing runs per handshake but one attribute read and, after a reload, the swap.

**The files.** Kubernetes' volumes (the Secrets Store CSI driver, a Secret, a ConfigMap)
are written by kubelet's atomic writer: the new files go into a fresh directory, and the
``..data`` symlink is flipped to it in one rename; the names we are given are links
through ``..data``, so their inode changes and an mtime may not. So every poll stats the
files *through* the links (cheap), and only when that changed reads them and compares
their SHA-256: a rewrite of the same bytes reloads nothing. A pair read while it was
being replaced (the content changed during the build) is not served and not counted as
a failure; it is read again at once, then on the next poll.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

log = logging.getLogger("serving.certwatch")

DEFAULT_INTERVAL_S = 30.0
# Reads of a pair that keeps changing under the build before waiting for the next poll.
_SETTLE_ATTEMPTS = 3


class Outcome(enum.Enum):
    """What one poll did."""

    UNCHANGED = "unchanged"  # same files, or same content: nothing rebuilt
    RELOADED = "reloaded"  # new handshakes get the new certificate
    REFUSED = "refused"  # the new files cannot be served; the old ones still are
    UNSETTLED = "unsettled"  # the files kept changing while being read: next poll


class CertificateRefused(Exception):
    """Files that must not replace the certificate being served."""


@dataclass(frozen=True)
class ServedCertificate:
    """The leaf certificate a context serves, as a client sees it."""

    serial: int
    sha256: str  # of the leaf's DER, hex: what `openssl x509 -fingerprint -sha256` shows
    not_after: dt.datetime

    @classmethod
    def of(cls, leaf: x509.Certificate) -> ServedCertificate:
        fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
        return cls(leaf.serial_number, fingerprint, leaf.not_valid_after_utc)


def inspect_chain(pem: bytes, now: dt.datetime) -> ServedCertificate:
    """The chain's leaf (the first certificate), once every certificate of the chain is
    within its validity period (RFC 5280 §4.1.2.5): a chain a client would refuse on its
    dates is not worth serving. Other PEM blocks (the private key, when one file holds
    both, as Key Vault's PEM does) are skipped."""
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertificateRefused(f"no certificate could be read: {exc}") from exc
    for cert in chain:
        serial = f"certificate {cert.serial_number:x}"
        if now < cert.not_valid_before_utc:
            raise CertificateRefused(f"{serial} is not valid before {cert.not_valid_before_utc}")
        if now >= cert.not_valid_after_utc:
            raise CertificateRefused(f"{serial} expired at {cert.not_valid_after_utc}")
    return ServedCertificate.of(chain[0])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stat(path: Path) -> tuple[int, ...] | None:
    """Identity and change times of the file behind ``path``'s links; None when missing."""
    try:
        st = os.stat(path)  # follows ..data → ..<timestamp>/<name>
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class CertificateReloader:
    """Builds the listening context, then keeps the context it hands to new handshakes in
    step with the files: ``cert`` (the chain, key first or not), ``key``, ``client_ca``.

    ``build`` makes a complete context from those files (a `serving.tls` function), so a
    reloaded context carries the same hardening as the first. The first build must
    succeed (there is nothing to fall back on); a chain outside its validity is served
    then with an error logged, since refusing to start would not serve a better one.
    """

    def __init__(
        self,
        build: Callable[[], ssl.SSLContext],
        *,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.cert, self.key = cert, key
        self.interval_s = interval_s
        self._build = build
        self._clock = clock
        # One file may be both certificate and key (Key Vault's PEM): read it once.
        self._files = tuple(dict.fromkeys(p for p in (cert, key, client_ca) if p is not None))
        self._refused_hooks: list[Callable[[str], None]] = []
        self.failures = 0
        self.last_error: str | None = None
        stats = self._stats()
        digest = self._digest()
        context = build()
        try:
            self.served = inspect_chain(self._read(cert), clock())
        except CertificateRefused as exc:
            self.served = self._leaf_regardless(cert)
            log.error("serving TLS certificate %s anyway: %s", cert, exc)
        self.context = context  # the listening context, Hypercorn's
        self.current = context  # the context new handshakes get
        self._stats_seen, self._digest_seen = stats, digest
        context.sni_callback = self._select

    def on_refused(self, hook: Callable[[str], None]) -> None:
        """Call ``hook`` with the reason each time new files are refused (metrics)."""
        self._refused_hooks.append(hook)

    def _select(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        # Runs inside OpenSSL's ClientHello processing: nothing that can raise or block.
        current = self.current
        if ssl_object.context is not current:
            ssl_object.context = current

    def check(self) -> Outcome:
        """One poll: reload when the files' content changed and the new files pass."""
        stats = self._stats()
        if stats == self._stats_seen and self.last_error is None:
            return Outcome.UNCHANGED
        for _ in range(_SETTLE_ATTEMPTS):
            try:
                before = self._digest()
            except OSError as exc:
                return self._refuse(f"cannot read {exc.filename}: {exc.strerror}")
            if before == self._digest_seen:
                self._stats_seen, self.last_error = stats, None
                return Outcome.UNCHANGED
            try:
                context, served = self._load()
            except CertificateRefused as exc:
                reason = str(exc)
            else:
                reason = ""
            try:
                settled = self._digest() == before
            except OSError:
                settled = False
            if not settled:
                stats = self._stats()
                continue  # changed under the build: read it again
            if reason:
                return self._refuse(reason)
            self.current, self.served = context, served
            self._stats_seen, self._digest_seen = stats, before
            self.last_error = None
            log.warning(
                "serving renewed TLS certificate %s: serial %x, sha256 %s, not after %s",
                self.cert,
                served.serial,
                served.sha256,
                served.not_after.isoformat(),
            )
            return Outcome.RELOADED
        log.info("TLS files %s kept changing while read; next poll", self.cert)
        return Outcome.UNSETTLED

    async def watch(self) -> None:
        """Poll forever; the files are read and the context built in a worker thread, on
        purpose: a CA bundle can be large, and the event loop must keep serving."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # a poll that failed in a way not foreseen must not end the rest
                log.exception("checking the TLS files %s failed", self.cert)

    def _load(self) -> tuple[ssl.SSLContext, ServedCertificate]:
        try:
            # OpenSSL checks that the key matches the certificate (KEY_VALUES_MISMATCH) and
            # that every file parses; a half-written file fails here.
            context = self._build()
            served = inspect_chain(self._read(self.cert), self._clock())
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise CertificateRefused(f"{type(exc).__name__}: {exc}") from exc
        return context, served

    def _refuse(self, reason: str) -> Outcome:
        self.failures += 1
        self.last_error = reason
        log.error(
            "refused the TLS files %s (still serving serial %x, not after %s): %s",
            ", ".join(map(str, self._files)),
            self.served.serial,
            self.served.not_after.isoformat(),
            reason,
        )
        for hook in self._refused_hooks:
            hook(reason)
        return Outcome.REFUSED

    def _stats(self) -> tuple[tuple[int, ...] | None, ...]:
        return tuple(_stat(p) for p in self._files)

    def _digest(self) -> bytes:
        h = hashlib.sha256()
        for path in self._files:
            data = self._read(path)
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
        return h.digest()

    @staticmethod
    def _read(path: Path) -> bytes:
        return path.read_bytes()

    def _leaf_regardless(self, cert: Path) -> ServedCertificate:
        chain = x509.load_pem_x509_certificates(self._read(cert))
        return ServedCertificate.of(chain[0])
