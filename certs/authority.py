"""A local certificate authority and the certificates it issues.

Used on laptops, in tests and in the demo: a dev CA plus server and client certificates,
all ECDSA P-256 (Mozilla server-side TLS: "ECDSA (P-256)" certificates for both the
intermediate and the modern profile) with short validity and subject alternative names
(RFC 6125: clients match names against the SAN, not the common name).

Files are never overwritten unless asked (``force=True``); private keys are written with
mode 0600 before any byte of key material reaches them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=365)
LEAF_VALIDITY = dt.timedelta(days=30)
# A leaf closer than this to expiry is renewed by `ensure_server_certificate`.
RENEW_BEFORE = dt.timedelta(days=7)
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


class CertificateError(Exception):
    """A certificate operation that cannot proceed (exists, missing CA, bad name)."""


class InvalidName(CertificateError):
    """A name that cannot go into a certificate's SAN."""


@dataclass(frozen=True)
class CertPaths:
    """Where the dev PKI lives inside a state directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey, *, force: bool) -> None:
    """Write a PEM key atomically; the file is 0600 from its creation (never world-readable)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, data, mode=0o600, force=force)


def _write_atomic(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    if path.exists() and not force:
        raise CertificateError(f"{path} exists; use --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _san_entries(names: tuple[str, ...]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not name or any(c.isspace() for c in name):
                raise InvalidName(f"invalid DNS name {name!r}") from None
            entries.append(x509.DNSName(name))
    return entries


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only (ECDSA keys never encipher); a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def describe(path: Path, now: dt.datetime | None = None) -> dict[str, Any]:
    """What a renewal script needs to know of a certificate (`scoregate certs show --json`).

    ``days_left`` is whole days, rounded down (negative once expired); the fingerprint is
    the SHA-256 of the DER certificate, as `openssl x509 -fingerprint -sha256` prints it.
    """
    try:
        cert = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{path}: not a PEM certificate ({exc})") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(entry.value) for entry in san]
    except x509.ExtensionNotFound:
        sans = []
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        named = {
            ExtendedKeyUsageOID.SERVER_AUTH: "server",
            ExtendedKeyUsageOID.CLIENT_AUTH: "client",
        }
        usages = [named[u] for u in eku if u in named]
    except x509.ExtensionNotFound:
        usages = []
    left = cert.not_valid_after_utc - (now or _now())
    return {
        "name": path.stem,
        "path": str(path),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": sans,
        "ca": ca,
        "usage": "ca" if ca else (usages[0] if usages else None),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": left.days,
        "expired": left.total_seconds() <= 0,
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    }


def create_ca(
    paths: CertPaths, *, common_name: str = "scoregate dev CA", force: bool = False
) -> x509.Certificate:
    """Create a self-signed CA allowed to sign end-entity certificates only (pathlen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    if not force and (paths.ca_cert.exists() or paths.ca_key.exists()):
        raise CertificateError(f"a CA already exists in {paths.root}; use --force to replace it")
    _write_private_key(paths.ca_key, key, force=force)
    _write_atomic(
        paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, force=force
    )
    return cert


def issue(
    paths: CertPaths,
    name: str,
    *,
    server_names: tuple[str, ...] = DEFAULT_SERVER_NAMES,
    client: bool = False,
    force: bool = False,
    validity: dt.timedelta = LEAF_VALIDITY,
) -> x509.Certificate:
    """Issue a server (or, with ``client=True``, a client) certificate signed by the CA."""
    if not paths.ca_cert.exists() or not paths.ca_key.exists():
        raise CertificateError(f"no CA in {paths.root}; run `scoregate certs init` first")
    if not force and (paths.cert(name).exists() or paths.key(name).exists()):
        raise CertificateError(f"certificate {name!r} already exists; use --force to replace it")
    ca_cert = load_certificate(paths.ca_cert)
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_san_entries(server_names)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            _key_usage(ca=False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private_key(paths.key(name), key, force=force)
    _write_atomic(
        paths.cert(name), cert.public_bytes(serialization.Encoding.PEM), mode=0o644, force=force
    )
    return cert


def needs_renewal(path: Path, *, within: dt.timedelta = RENEW_BEFORE) -> bool:
    """True when the certificate is missing or expires within ``within``."""
    if not path.exists():
        return True
    return load_certificate(path).not_valid_after_utc - _now() < within


def ensure_server_certificate(paths: CertPaths, name: str = "gateway") -> list[str]:
    """Make what is missing and renew a leaf close to expiry; never replace a valid CA.

    Returns what was done, one line per action, for the command line to print.
    """
    done: list[str] = []
    if not paths.ca_cert.exists():
        create_ca(paths)
        done.append(f"created CA {paths.ca_cert}")
    elif needs_renewal(paths.ca_cert):
        raise CertificateError(
            f"the CA {paths.ca_cert} expires soon; replace it with `scoregate certs init --force`"
        )
    if needs_renewal(paths.cert(name)):
        issue(paths, name, force=True)
        done.append(f"issued {paths.cert(name)}")
    return done
