"""serving.certwatch: renewed certificate files are served to new handshakes, broken ones
never replace the working certificate.

The files are real, written as Kubernetes writes a CSI volume (tests/csi_volume.py), the
certificates issued by a real dev CA, and the handshakes real TLS over loopback against
the context the reloader hands to the server. The gateway's own process is swapped under
in tests/e2e/test_certificate_rotation.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509

from certs.authority import CertPaths, create_ca, issue
from serving import tls
from serving.certwatch import CertificateReloader, Outcome
from tests.csi_volume import AtomicWriterVolume, key_vault_pem

PEM = "gateway.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """A CA with server certificates first..fourth, one expired, and one from another CA."""
    paths = CertPaths(tmp_path_factory.mktemp("pki"))
    create_ca(paths)
    for name in ("first", "second", "third", "fourth"):
        issue(paths, name)
    issue(paths, "expired", validity=dt.timedelta(minutes=-1))  # ended a minute ago
    return paths


def serial(pki: CertPaths, name: str) -> int:
    return x509.load_pem_x509_certificate(pki.cert(name).read_bytes()).serial_number


def gateway_reloader(
    volume: AtomicWriterVolume, clock: Callable[[], dt.datetime] | None = None
) -> CertificateReloader:
    """The gateway's arrangement: one Key Vault PEM as both certificate and key."""
    pem = volume.path(PEM)
    build = lambda: tls.server_context(pem, pem)  # noqa: E731
    if clock is None:
        return CertificateReloader(build, cert=pem, key=pem)
    return CertificateReloader(build, cert=pem, key=pem, clock=clock)


@pytest.fixture
def volume(tmp_path: Path, pki: CertPaths) -> AtomicWriterVolume:
    vol = AtomicWriterVolume(tmp_path / "secrets-store")
    vol.write({PEM: key_vault_pem(pki, "first")})
    return vol


# -- the decision ------------------------------------------------------------------------


def test_unchanged_files_build_nothing(volume: AtomicWriterVolume, pki: CertPaths) -> None:
    reloader = gateway_reloader(volume)
    assert reloader.served.serial == serial(pki, "first")
    assert reloader.check() is Outcome.UNCHANGED
    assert reloader.current is reloader.context


def test_a_symlink_flip_to_a_renewed_pair_is_loaded_with_the_same_hardening(
    volume: AtomicWriterVolume, pki: CertPaths
) -> None:
    reloader = gateway_reloader(volume)
    volume.write({PEM: key_vault_pem(pki, "second")})
    assert reloader.check() is Outcome.RELOADED
    assert reloader.served.serial == serial(pki, "second")
    new, first = reloader.current, reloader.context
    assert new is not first
    # The same serving.tls function built both: the same floor, options and suites.
    assert new.minimum_version == first.minimum_version == ssl.TLSVersion.TLSv1_2
    assert new.options == first.options
    assert new.options & ssl.OP_NO_TICKET and new.options & ssl.OP_NO_COMPRESSION
    assert [c["name"] for c in new.get_ciphers()] == [c["name"] for c in first.get_ciphers()]
    assert reloader.check() is Outcome.UNCHANGED
    assert reloader.current is new


def test_the_same_bytes_published_again_reload_nothing(
    volume: AtomicWriterVolume, pki: CertPaths
) -> None:
    reloader = gateway_reloader(volume)
    stat_before = volume.path(PEM).stat()
    volume.write({PEM: key_vault_pem(pki, "first")})  # a new directory, the same content
    assert volume.path(PEM).stat().st_ino != stat_before.st_ino
    assert reloader.check() is Outcome.UNCHANGED
    assert reloader.current is reloader.context


def _truncated(pki: CertPaths) -> bytes:
    pem = key_vault_pem(pki, "second")
    return pem[: len(pem) - 200]  # a file caught half-written


BROKEN: dict[str, tuple[Callable[[CertPaths], bytes], str]] = {
    "key_of_another_certificate": (
        lambda p: key_vault_pem(p, "second", key_of="third"),
        "KEY_VALUES_MISMATCH",
    ),
    "half_written": (_truncated, "SSLError"),
    "expired_chain": (lambda p: key_vault_pem(p, "expired"), "expired at"),
    "no_certificate_at_all": (lambda p: p.key("second").read_bytes(), "SSLError"),
    "not_pem": (lambda p: b"\x00garbage\n", "SSLError"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_never_replace_the_served_certificate_and_are_retried(
    case: str, volume: AtomicWriterVolume, pki: CertPaths, caplog: pytest.LogCaptureFixture
) -> None:
    content, reason = BROKEN[case]
    reloader = gateway_reloader(volume)
    reasons: list[str] = []
    reloader.on_refused(reasons.append)
    volume.write({PEM: content(pki)})
    with caplog.at_level(logging.ERROR, logger="serving.certwatch"):
        assert reloader.check() is Outcome.REFUSED
    assert reloader.current is reloader.context  # still the first certificate
    assert reloader.served.serial == serial(pki, "first")
    assert reloader.failures == 1 and len(reasons) == 1
    assert reason in reasons[0] and reloader.last_error == reasons[0]
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "still serving" in record.getMessage()
    assert "PRIVATE KEY" not in record.getMessage()
    # Retried on the next poll, though the files did not change; refused again.
    assert reloader.check() is Outcome.REFUSED
    assert reloader.failures == 2
    # Fixed files are taken, and the error clears.
    volume.write({PEM: key_vault_pem(pki, "fourth")})
    assert reloader.check() is Outcome.RELOADED
    assert reloader.served.serial == serial(pki, "fourth")
    assert reloader.last_error is None and reloader.failures == 2


def test_files_reverted_to_the_served_ones_clear_the_error(
    volume: AtomicWriterVolume, pki: CertPaths
) -> None:
    reloader = gateway_reloader(volume)
    volume.write({PEM: key_vault_pem(pki, "second", key_of="third")})
    assert reloader.check() is Outcome.REFUSED
    volume.write({PEM: key_vault_pem(pki, "first")})
    assert reloader.check() is Outcome.UNCHANGED
    assert reloader.last_error is None and reloader.current is reloader.context


def test_a_certificate_not_yet_valid_is_taken_once_its_time_comes(
    volume: AtomicWriterVolume, pki: CertPaths
) -> None:
    # "second" is valid from five minutes before it was issued; a clock an hour behind
    # sees it as not yet valid (RFC 5280 §4.1.2.5), then the clock catches up.
    now = [dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)]
    reloader = gateway_reloader(volume, clock=lambda: now[0])  # logs "first" as future
    volume.write({PEM: key_vault_pem(pki, "second")})
    assert reloader.check() is Outcome.REFUSED
    assert "not valid before" in (reloader.last_error or "")
    now[0] = dt.datetime.now(dt.UTC)
    assert reloader.check() is Outcome.RELOADED  # same files, judged again
    assert reloader.served.serial == serial(pki, "second")


def test_files_replaced_during_the_build_are_read_again_not_served_half(
    volume: AtomicWriterVolume, pki: CertPaths
) -> None:
    pem = volume.path(PEM)
    builds = []

    def build() -> ssl.SSLContext:
        context = tls.server_context(pem, pem)
        builds.append(context)
        if len(builds) == 2:  # the first reload: the driver flips again mid-build
            volume.write({PEM: key_vault_pem(pki, "third")})
        return context

    reloader = CertificateReloader(build, cert=pem, key=pem)
    volume.write({PEM: key_vault_pem(pki, "second")})
    assert reloader.check() is Outcome.RELOADED
    assert len(builds) == 3
    assert reloader.current is builds[2]  # not the one built while the files changed
    assert reloader.served.serial == serial(pki, "third")
    assert reloader.failures == 0


def test_an_expired_certificate_at_start_is_served_with_an_error(
    tmp_path: Path, pki: CertPaths, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing better to serve: refusing to start would not help a client.
    volume = AtomicWriterVolume(tmp_path / "secrets-store")
    volume.write({PEM: key_vault_pem(pki, "expired")})
    with caplog.at_level(logging.ERROR, logger="serving.certwatch"):
        reloader = gateway_reloader(volume)
    assert reloader.served.serial == serial(pki, "expired")
    assert reloader.served.not_after < dt.datetime.now(dt.UTC)
    assert "expired at" in caplog.text


def test_a_broken_file_at_start_fails_the_start(tmp_path: Path, pki: CertPaths) -> None:
    volume = AtomicWriterVolume(tmp_path / "secrets-store")
    volume.write({PEM: key_vault_pem(pki, "second", key_of="third")})
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        gateway_reloader(volume)


def test_the_interval_must_be_positive(volume: AtomicWriterVolume) -> None:
    pem = volume.path(PEM)
    with pytest.raises(ValueError, match="interval_s"):
        CertificateReloader(lambda: tls.server_context(pem, pem), cert=pem, key=pem, interval_s=0)


# -- real handshakes against the reloader's listening context ----------------------------


@pytest.fixture
async def listener(volume: AtomicWriterVolume) -> AsyncIterator[tuple[CertificateReloader, int]]:
    reloader = gateway_reloader(volume)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=reloader.context)
    port = server.sockets[0].getsockname()[1]
    yield reloader, port
    server.close()
    await server.wait_closed()


async def connect(
    port: int, ca: Path, host: str = "localhost"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, str | None]:
    """A client handshake: the served leaf's serial and the ALPN protocol chosen."""
    ctx = tls.client_context(ca)
    ctx.set_alpn_protocols(tls.ALPN)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    tls_object = writer.get_extra_info("ssl_object")
    der = tls_object.getpeercert(binary_form=True)
    return (
        reader,
        writer,
        x509.load_der_x509_certificate(der).serial_number,
        (tls_object.selected_alpn_protocol()),
    )


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping")
    await writer.drain()
    return await reader.readexactly(4)


async def test_new_handshakes_get_the_renewed_certificate_and_open_ones_carry_on(
    listener: tuple[CertificateReloader, int], volume: AtomicWriterVolume, pki: CertPaths
) -> None:
    reloader, port = listener
    old_reader, old_writer, before, alpn = await connect(port, pki.ca_cert)
    assert (before, alpn) == (serial(pki, "first"), "h2")
    volume.write({PEM: key_vault_pem(pki, "second")})
    assert await asyncio.to_thread(reloader.check) is Outcome.RELOADED
    # With SNI (a name) and without (an IP address: clients send no SNI for one).
    for host in ("localhost", "127.0.0.1"):
        reader, writer, after, alpn = await connect(port, pki.ca_cert, host)
        assert (after, alpn) == (serial(pki, "second"), "h2")
        assert await roundtrip(reader, writer) == b"ping"
        writer.close()
    # The connection opened before the swap keeps its session and still works.
    assert await roundtrip(old_reader, old_writer) == b"ping"
    old_writer.close()


async def test_the_watch_loop_picks_up_a_flip_within_its_interval(
    volume: AtomicWriterVolume, pki: CertPaths
) -> None:
    pem = volume.path(PEM)
    reloader = CertificateReloader(
        lambda: tls.server_context(pem, pem), cert=pem, key=pem, interval_s=0.05
    )
    task = asyncio.create_task(reloader.watch())
    try:
        volume.write({PEM: key_vault_pem(pki, "second")})
        async with asyncio.timeout(5):
            while reloader.served.serial != serial(pki, "second"):
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert reloader.current is not reloader.context


async def test_a_renewed_client_ca_bundle_is_trusted_for_new_mutual_tls_handshakes(
    tmp_path: Path, pki: CertPaths
) -> None:
    """The scorer's arrangement (mutual TLS): certificate, key and client CA bundle, each
    its own file in one volume. After the bundle moves to a new CA, clients of the new CA
    get in and clients of the old one no longer do."""
    old_ca, new_ca = CertPaths(tmp_path / "old-ca"), CertPaths(tmp_path / "new-ca")
    for ca in (old_ca, new_ca):
        create_ca(ca)
        issue(ca, "gateway-client", client=True)
    volume = AtomicWriterVolume(tmp_path / "scorer-tls")
    files = {"tls.crt": pki.cert("first").read_bytes(), "tls.key": pki.key("first").read_bytes()}
    volume.write({**files, "client-ca.pem": old_ca.ca_cert.read_bytes()})
    cert, key, bundle = volume.path("tls.crt"), volume.path("tls.key"), volume.path("client-ca.pem")
    reloader = CertificateReloader(
        lambda: tls.internal_server_context(cert, key, client_ca=bundle),
        cert=cert,
        key=key,
        client_ca=bundle,
    )

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=reloader.context)
    port = server.sockets[0].getsockname()[1]

    async def handshake_as(client: CertPaths) -> bytes:
        ctx = tls.client_context(pki.ca_cert)
        ctx.load_cert_chain(client.cert("gateway-client"), client.key("gateway-client"))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        try:
            # TLS 1.3: the server judges the client's certificate after the client's
            # handshake is done; a refusal shows on the first read (EOF or an alert).
            return await reader.read(2)
        except (ssl.SSLError, ConnectionResetError):
            return b""
        finally:
            writer.close()

    try:
        assert await handshake_as(old_ca) == b"ok"
        volume.write({**files, "client-ca.pem": new_ca.ca_cert.read_bytes()})
        assert reloader.check() is Outcome.RELOADED
        assert await handshake_as(new_ca) == b"ok"
        assert await handshake_as(old_ca) == b""
    finally:
        server.close()
        await server.wait_closed()
