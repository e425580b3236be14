"""Scan one TLS server with sslyze and judge it against a Mozilla profile; print JSON.

Run by `test_tls_scan.py` with the interpreter of `.venv-sslyze` (see the Makefile):
sslyze 6 pins ``cryptography<47`` while the gateway runs on a newer release, so the
scanner lives in a virtual environment of its own instead of downgrading ours. This
file therefore imports nothing from the project.

    python sslyze_scan.py HOST PORT {CA_FILE,-} {intermediate,modern}

``CA_FILE`` is the trust anchor for the certificate checks (our dev CA, which no public
store holds); ``-`` scans with sslyze's public stores only.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from sslyze import (
    CertificateInfoExtraArgument,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.__version__ import __version__ as sslyze_version
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

# A root in sslyze's bundled public trust stores has a negative serial number; loading it
# warns on every scan. It is not ours and plays no part in the dev CA's verdict.
warnings.filterwarnings("ignore", message="Parsed a serial number which wasn't positive")

VERSIONS = {
    "ssl_2_0_cipher_suites": "SSLv2",
    "ssl_3_0_cipher_suites": "SSLv3",
    "tls_1_0_cipher_suites": "TLSv1",
    "tls_1_1_cipher_suites": "TLSv1.1",
    "tls_1_2_cipher_suites": "TLSv1.2",
    "tls_1_3_cipher_suites": "TLSv1.3",
}


def _describe_key(key: object) -> str:
    if isinstance(key, EllipticCurvePublicKey):
        return f"ecdsa {key.curve.name}"
    if isinstance(key, RSAPublicKey):
        return f"rsa {key.key_size}"
    return type(key).__name__


def scan(host: str, port: int, ca_file: Path | None, profile: str) -> dict[str, Any]:
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=host, port=port, ip_address="127.0.0.1"),
        scan_commands={
            *SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
            ScanCommand.HTTP_HEADERS,
            ScanCommand.SESSION_RESUMPTION,
        },
        # The dev CA is this deployment's trust anchor; no public store knows it.
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca_file)
            if ca_file is not None
            else None
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    if result.scan_status != ServerScanStatusEnum.COMPLETED or result.scan_result is None:
        return {"error": f"scan {result.scan_status.value}: {result.connectivity_error_trace}"}
    attempts = result.scan_result
    failed = {
        command.value: str(getattr(attempts, command.value).error_reason)
        for command in request.scan_commands
        if getattr(attempts, command.value).status != ScanCommandAttemptStatusEnum.COMPLETED
    }
    if failed:
        return {"error": f"scan commands did not complete: {failed}"}

    config = MozillaTlsConfiguration.get(TlsConfigurationEnum(profile))
    try:
        check_server_against_tls_configuration(result, config)
        issues: dict[str, str] = {}
    except ServerNotCompliantWithTlsConfiguration as exc:
        issues = exc.issues

    accepted: dict[str, list[str]] = {}
    groups: set[str] = set()
    for field, version in VERSIONS.items():
        suites = getattr(attempts, field).result
        if suites.is_tls_version_supported:
            accepted[version] = sorted(s.cipher_suite.name for s in suites.accepted_cipher_suites)
            for suite in suites.accepted_cipher_suites:
                key = suite.ephemeral_key
                if key is not None and hasattr(key, "curve_name"):
                    groups.add(key.curve_name)
    certificate = attempts.certificate_info.result
    deployment = certificate.certificate_deployments[0]
    leaf = deployment.received_certificate_chain[0]
    curves = attempts.elliptic_curves.result
    headers = attempts.http_headers.result
    hsts = headers.strict_transport_security_header if headers else None
    resumption = attempts.session_resumption.result
    return {
        "sslyze": sslyze_version,
        "mozilla_guidelines": json.loads(MozillaTlsConfiguration._JSON_PROFILE_PATH.read_text())[
            "version"
        ],
        "profile": profile,
        "issues": issues,
        "accepted": accepted,
        "ephemeral_groups": sorted(groups),
        "supported_curves": sorted(c.name for c in curves.supported_curves or []),
        "curves_rejected": sorted(c.name for c in curves.rejected_curves or []),
        "certificate": {
            # Path validation includes the host name (the SNI sent) against the SANs.
            "validated_by": sorted(
                r.trust_store.name
                for r in deployment.path_validation_results
                if r.was_validation_successful
            ),
            "lifespan_days": (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days,
            "public_key": _describe_key(leaf.public_key()),
            "signature": leaf.signature_algorithm_oid._name,
        },
        "compression": attempts.tls_compression.result.supports_compression,
        "fallback_scsv": attempts.tls_fallback_scsv.result.supports_fallback_scsv,
        "extended_master_secret": attempts.tls_extended_master_secret.result.supports_ems_extension,
        "secure_renegotiation": attempts.session_renegotiation.result.supports_secure_renegotiation,
        "client_renegotiation_dos": (
            attempts.session_renegotiation.result.is_vulnerable_to_client_renegotiation_dos
        ),
        "tls_ticket_resumption": resumption.tls_ticket_resumption_result.name,
        "session_id_resumption": resumption.session_id_resumption_result.name,
        "hsts_max_age": hsts.max_age if hsts else None,
        "hsts_include_subdomains": hsts.include_subdomains if hsts else None,
    }


if __name__ == "__main__":
    host, port, ca_file, profile = sys.argv[1:5]
    ca = None if ca_file == "-" else Path(ca_file)
    sys.stdout.write(json.dumps(scan(host, int(port), ca, profile), indent=2) + "\n")
