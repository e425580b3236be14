from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authority import (
    CertificateError,
    CertPaths,
    create_ca,
    ensure_server_certificate,
    issue,
    load_certificate,
    needs_renewal,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_and_server_certificate_are_p256_with_sans_and_short_validity(tmp_path: Path) -> None:
    paths = CertPaths(tmp_path)
    ca = create_ca(paths)
    cert = issue(paths, "gateway")
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=31)
    assert cert.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_private_keys_are_written_0600(tmp_path: Path) -> None:
    paths = CertPaths(tmp_path)
    create_ca(paths)
    issue(paths, "gateway")
    assert mode(paths.ca_key) == 0o600
    assert mode(paths.key("gateway")) == 0o600
    assert mode(paths.ca_cert) == 0o644


def test_rerun_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    paths = CertPaths(tmp_path)
    create_ca(paths)
    issue(paths, "gateway")
    before = paths.ca_key.read_bytes(), paths.key("gateway").read_bytes()
    with pytest.raises(CertificateError, match="--force"):
        create_ca(paths)
    with pytest.raises(CertificateError, match="--force"):
        issue(paths, "gateway")
    assert (paths.ca_key.read_bytes(), paths.key("gateway").read_bytes()) == before
    issue(paths, "gateway", force=True)
    assert paths.key("gateway").read_bytes() != before[1]


def test_issue_without_a_ca_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="certs init"):
        issue(CertPaths(tmp_path), "gateway")


def test_client_certificate_has_client_auth_usage(tmp_path: Path) -> None:
    paths = CertPaths(tmp_path)
    create_ca(paths)
    cert = issue(paths, "scorer-client", server_names=("gateway",), client=True)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]


def test_ensure_creates_then_keeps_then_renews_a_leaf_near_expiry(tmp_path: Path) -> None:
    paths = CertPaths(tmp_path)
    assert len(ensure_server_certificate(paths)) == 2
    ca_before = paths.ca_cert.read_bytes()
    assert ensure_server_certificate(paths) == []
    issue(paths, "gateway", force=True, validity=dt.timedelta(days=2))
    assert needs_renewal(paths.cert("gateway"))
    assert ensure_server_certificate(paths) == [f"issued {paths.cert('gateway')}"]
    assert not needs_renewal(paths.cert("gateway"))
    assert paths.ca_cert.read_bytes() == ca_before
    assert load_certificate(paths.cert("gateway")).issuer == load_certificate(paths.ca_cert).subject


def test_invalid_dns_name_is_refused(tmp_path: Path) -> None:
    paths = CertPaths(tmp_path)
    create_ca(paths)
    with pytest.raises(CertificateError, match="invalid DNS name"):
        issue(paths, "x", server_names=("bad name",))
