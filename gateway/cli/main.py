"""``scoregate``: one command line for the people who run, call and review the gateway.

scoregate serve                       run the gateway (HTTPS)
scoregate demo [--once]               the whole stack on this machine, with real requests
scoregate certs init|issue|show       the dev CA and certificates
scoregate keys create|rotate|list|revoke  API keys in the secret store
scoregate score MODEL --instances|--input|--image …  call the gateway as a client
scoregate audit verify PATH…          check the audit trail's hash chain
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from certs.authority import (
    DEFAULT_SERVER_NAMES,
    CertificateError,
    CertPaths,
    InvalidName,
    create_ca,
    describe,
    issue,
)
from gateway.settings import GatewaySettings, unknown_environment

if TYPE_CHECKING:  # imported where used: each command loads only what it needs
    import datetime as dt

    from gateway.identity.delivery import DeliveryTarget
    from gateway.identity.lifecycle import Rotation
    from gateway.secretstore.protocol import SecretStore

T = TypeVar("T")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(f"scoregate: {line}\n")


class SettingsError(Exception):
    pass


# -- exit codes: one scheme for keys, certs and score (README, "The `scoregate` command") --
EXIT_OK = 0
EXIT_FAILED = 1  # refused as asked (no such key, a certificate exists); score: an error answer
EXIT_USAGE = 2  # bad arguments or settings; nothing was changed (argparse exits 2 too)
EXIT_UNREACHABLE = 3  # a store or vault failed, or the gateway could not be reached
EXIT_KEY_LEFT_VALID = 4  # delivery failed and the new generation could not be revoked

EXIT_CODES = """\
exit codes:
  0  done
  1  refused as asked: no such key or version, no active generation to rotate, a
     certificate that exists (without --force), no CA; score: the gateway answered an
     error (its code and message on stderr)
  2  usage: bad arguments or settings, an invalid --deliver-to URL; nothing was changed
  3  a store failed: the secret store or the --deliver-to vault unreachable, throttling
     or refusing; nothing is left changed (an undelivered generation is revoked, the
     previous ones untouched): run again later. score: the gateway could not be reached
  4  keys rotate --deliver-to: delivery failed and revoking the new generation failed
     too: a valid key nobody holds exists; revoke the version printed, now
with --json a failure is a JSON document on stdout too:
  {"error": "<message>", "code": "<stable code>", ...}
"""


class Failure(Exception):
    """How a command failed: its exit status, a stable code and a message for the operator."""

    def __init__(self, exit_status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.code = code
        self.extra = extra


def _reporting(args: argparse.Namespace, body: Callable[[], int]) -> int:
    """Run a command; a failure goes to stderr, and with --json as a document to stdout."""
    try:
        return body()
    except Failure as exc:
        failure = exc
    except (SettingsError, ValidationError) as exc:
        failure = Failure(EXIT_USAGE, "invalid_settings", f"invalid settings: {exc}")
    _err(str(failure))
    if getattr(args, "json", False):
        _out(json.dumps({"error": str(failure), "code": failure.code, **failure.extra}))
    return failure.exit_status


def _settings(args: argparse.Namespace, **overrides: Any) -> GatewaySettings:
    unknown = unknown_environment(os.environ)
    if unknown:
        raise SettingsError(f"unknown settings in the environment: {', '.join(unknown)}")
    if args.state_dir is not None:
        overrides["state_dir"] = args.state_dir
    return GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})


# -- serve ---------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.audit.record import AuditTrailError
    from gateway.policy import PolicyError
    from gateway.ratelimit.policy import RateLimitPolicyError
    from gateway.server import run

    settings = _settings(args, host=args.host, port=args.port)
    try:
        run(settings)
    except (PolicyError, RateLimitPolicyError) as exc:
        _err(f"invalid policy: {exc}")
        return 2
    except AuditTrailError as exc:
        _err(str(exc))
        return 2
    except FileNotFoundError as exc:
        _err(f"{exc.filename}: not found (run `scoregate certs init` first?)")
        return 2
    return 0


# -- development tools (a checkout's; production installs leave gateway.dev out) -------
def _no_dev_tools(exc: ModuleNotFoundError, command: str) -> int:
    if exc.name is None or not exc.name.startswith("gateway.dev"):
        raise exc
    _err(f"`scoregate {command}` is a development tool, not installed here: run it from a checkout")
    return 2


# -- demo ----------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from gateway.dev.demo import run_demo
    except ModuleNotFoundError as exc:
        return _no_dev_tools(exc, "demo")

    settings = _settings(args, port=args.port)
    return run_demo(
        settings,
        once=args.once,
        scorer_port=args.scorer_port,
        gpu_scorer_port=args.gpu_scorer_port,
        out=_out,
    )


# -- certs ---------------------------------------------------------------------------
def cmd_certs(args: argparse.Namespace) -> int:
    return _reporting(args, lambda: _certs(args))


def _certs(args: argparse.Namespace) -> int:
    paths = CertPaths(_settings(args).state_dir / "certs")
    try:
        if args.certs_command == "init":
            create_ca(paths, force=args.force)
            issue(paths, "gateway", force=True)
            ca, leaf = describe(paths.ca_cert), describe(paths.cert("gateway"))
            if args.json:
                _out(json.dumps({"ca": ca, "issued": leaf}))
            else:
                _out(f"created CA {paths.ca_cert}")
                _out(f"issued {paths.cert('gateway')} for {', '.join(DEFAULT_SERVER_NAMES)}")
        elif args.certs_command == "issue":
            names = tuple(args.san or DEFAULT_SERVER_NAMES)
            issue(paths, args.name, server_names=names, client=args.client, force=args.force)
            doc = describe(paths.cert(args.name))
            if args.json:
                _out(json.dumps(doc))
            else:
                _out(f"issued {doc['path']} ({doc['usage']}) for {', '.join(names)}")
        else:
            _certs_show(args, paths)
    except InvalidName as exc:
        raise Failure(EXIT_USAGE, "invalid_argument", str(exc)) from exc
    except CertificateError as exc:
        raise Failure(EXIT_FAILED, "certificate_refused", str(exc)) from exc
    return EXIT_OK


def _certs_show(args: argparse.Namespace, paths: CertPaths) -> None:
    if args.names:
        missing = [n for n in args.names if not paths.cert(n).is_file()]
        if missing:
            raise Failure(
                EXIT_FAILED,
                "certificate_not_found",
                f"no certificate {', '.join(missing)} in {paths.root}",
            )
        pems = [paths.cert(n) for n in args.names]
    else:
        pems = sorted(paths.root.glob("*.pem"))
        if not pems:
            raise Failure(
                EXIT_FAILED,
                "no_certificates",
                f"no certificates in {paths.root}; run `scoregate certs init`",
            )
    for pem in pems:
        doc = describe(pem)
        if args.json:
            _out(json.dumps(doc))  # JSON lines: one certificate a line
        else:
            expires = doc["not_after"][:16].replace("T", " ")
            _out(
                f"{pem.name:<16} {doc['subject']:<28} expires {expires}Z "
                f"({doc['days_left']} days left)"
            )


# -- keys ----------------------------------------------------------------------------
def cmd_keys(args: argparse.Namespace) -> int:
    return _reporting(args, lambda: _keys(args))


def _keys(args: argparse.Namespace) -> int:
    from gateway.identity import lifecycle
    from gateway.identity.delivery import DeliveryTargetError, parse_target
    from gateway.secretstore.factory import open_store
    from gateway.secretstore.protocol import SecretStoreError

    settings = _settings(args)
    command = args.keys_command

    # Every argument is checked before the store is touched: a usage error changes nothing.
    try:
        expires = lifecycle.parse_duration(args.expires) if getattr(args, "expires", None) else None
        overlap = lifecycle.parse_duration(getattr(args, "overlap", None) or "24h")
        target = parse_target(args.deliver_to) if getattr(args, "deliver_to", None) else None
    except lifecycle.InvalidKeyRequest as exc:
        raise Failure(EXIT_USAGE, exc.code, str(exc)) from exc
    except DeliveryTargetError as exc:
        raise Failure(EXIT_USAGE, "invalid_delivery_target", str(exc)) from exc

    async def run(store: SecretStore) -> None:
        if command == "create":
            issued = await lifecycle.create(
                store, owner=args.owner, scopes=args.scope, expires_in=expires
            )
            info = lifecycle.describe(issued.generation)
            # The secret is shown here, once; only its digest is stored.
            if args.json:
                _out(json.dumps({"key": issued.key, **info}))
            else:
                _out(issued.key)
                sys.stderr.write(
                    f"key id {info['key_id']} for {info['owner']} ({' '.join(info['scopes'])}): "
                    "store the key now, it is not shown again\n"
                )
        elif command == "rotate":
            await _rotate(args, store, overlap, expires, target)
        elif command == "list":
            rows = [lifecycle.describe(g) for g in await lifecycle.list_keys(store)]
            if args.json:
                for row in rows:
                    _out(json.dumps(row))
            else:
                _keys_table(rows)
        else:
            for generation in await lifecycle.revoke(store, args.key_id, args.version):
                if args.json:
                    _out(json.dumps(lifecycle.describe(generation)))
                else:
                    _out(f"revoked {generation.key_id} version {generation.version}")

    async def go() -> None:
        try:
            store = open_store(settings)
        except SecretStoreError as exc:  # a setting missing (the vault's URL)
            raise Failure(EXIT_USAGE, "invalid_settings", str(exc)) from exc
        try:
            await run(store)
        finally:
            await store.close()

    try:
        asyncio.run(go())
    except lifecycle.DeliveryFailed as exc:
        extra = {"key_id": exc.key_id, "version": exc.version, "revoked": exc.revoked}
        if exc.revoked:
            raise Failure(EXIT_UNREACHABLE, exc.code, str(exc), **extra) from exc
        raise Failure(EXIT_KEY_LEFT_VALID, "undelivered_key_left_valid", str(exc), **extra) from exc
    except lifecycle.InvalidKeyRequest as exc:
        raise Failure(EXIT_USAGE, exc.code, str(exc)) from exc
    except lifecycle.KeyAdminError as exc:
        raise Failure(EXIT_FAILED, exc.code, str(exc)) from exc
    except (SecretStoreError, OSError) as exc:
        raise Failure(EXIT_UNREACHABLE, "store_failed", f"the secret store failed: {exc}") from exc
    return EXIT_OK


async def _rotate(
    args: argparse.Namespace,
    store: SecretStore,
    overlap: dt.timedelta,
    expires: dt.timedelta | None,
    target: DeliveryTarget | None,
) -> None:
    """`keys rotate`: the new key printed once, or delivered to a vault and never shown."""
    from gateway.identity import lifecycle
    from gateway.identity.delivery import open_delivery

    if target is None:
        rotation = await lifecycle.rotate(store, args.key_id, overlap=overlap, expires_in=expires)
        new = rotation.issued
        if args.json:
            _out(json.dumps({"key": new.key, **_rotated(rotation)}))
        else:
            _out(new.key)  # shown once, like at creation
            sys.stderr.write(
                f"new generation {new.generation.version} of {args.key_id}; the previous "
                f"ones stay valid for {args.overlap}: store the key now, it is not shown again\n"
            )
        return
    delivery = open_delivery(target)
    try:
        rotation, delivered = await lifecycle.rotate_and_deliver(
            store, args.key_id, delivery, overlap=overlap, expires_in=expires
        )
    finally:
        await delivery.close()
    doc = {
        **_rotated(rotation),
        "delivered_to": delivered.url,
        "secret_id": delivered.secret_id,
        "secret_version": delivered.secret_version,
    }
    if args.json:
        _out(json.dumps(doc))
    else:
        _out(
            f"rotated {doc['key_id']}: generation {doc['version']} delivered to "
            f"{delivered.url} (secret version {delivered.secret_version}); the previous "
            f"generations stay valid for {args.overlap}"
        )


def _rotated(rotation: Rotation) -> dict[str, Any]:
    from gateway.identity import lifecycle

    return {
        **lifecycle.describe(rotation.issued.generation),
        "previous": [lifecycle.describe(g) for g in rotation.previous],
    }


def _keys_table(rows: list[dict[str, Any]]) -> None:
    widths = {"key_id": 17, "version": 33, "state": 8, "owner": 12, "expires_on": 26}
    _out(" ".join(f"{c.upper():<{w}}" for c, w in widths.items()) + " SCOPES")
    for r in rows:
        cells = {**r, "expires_on": r["expires_on"] or "-"}
        _out(" ".join(f"{cells[c]:<{w}}" for c, w in widths.items()) + f" {' '.join(r['scopes'])}")


# -- token ---------------------------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> int:
    try:
        from gateway.dev import issuer as dev_issuer
    except ModuleNotFoundError as exc:
        return _no_dev_tools(exc, "token mint")
    from gateway.identity import lifecycle
    from gateway.identity.issuers import load_issuers
    from gateway.secretstore.localfile import LocalSecretStore

    settings = _settings(args)
    if settings.secret_store != "local":  # noqa: S105 - a backend name
        # The dev issuer must never sign with keys from a production vault.
        _err("token mint works against the embedded local store only")
        return 2
    issuers = {cfg.name: cfg for cfg in load_issuers(settings.jwt_issuers_file)}
    issuer = issuers.get(args.issuer)
    if issuer is None:
        _err(f"no issuer {args.issuer!r} in {settings.jwt_issuers_file}")
        return 2
    ttl = int(lifecycle.parse_duration(args.ttl).total_seconds())
    store = LocalSecretStore(settings.store_path)
    token = asyncio.run(
        dev_issuer.mint(store, issuer, subject=args.sub, scopes=args.scope or [], ttl_s=ttl)
    )
    _out(token)
    return 0


# -- score ---------------------------------------------------------------------------
# A key or a token given as the argument itself: arguments are visible to every user of
# the machine (ps, /proc/<pid>/cmdline) and land in shell history, so they are refused.
_SECRET_SHAPED = re.compile(r"sg_[a-z2-7]{16}_|eyJ[A-Za-z0-9_-]+\.")
_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
_MAX_IMAGE_BYTES = 16 * 1024 * 1024  # far above any model's limit; the gateway answers 413


def cmd_score(args: argparse.Namespace) -> int:
    return _reporting(args, lambda: _score(args))


def _score(args: argparse.Namespace) -> int:
    import http.client
    from urllib.parse import quote

    from gateway.client import call

    settings = _settings(args)
    api_key, token = _score_credential(args)
    path, payload = _score_request(args, quote(args.model, safe=""))
    url = f"{args.url.rstrip('/')}{path}"
    try:
        reply = call(
            url,
            ca=args.ca or settings.ca_path,
            method="POST",
            payload=payload,
            api_key=api_key,
            bearer=token,
            timeout_s=args.timeout,
        )
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, TLS, timeout
        raise Failure(
            EXIT_UNREACHABLE, "gateway_unreachable", f"cannot reach {args.url}: {exc}"
        ) from exc
    except ValueError as exc:  # not an https:// URL (a TLS verification error is an OSError)
        raise Failure(EXIT_USAGE, "invalid_argument", f"--url: {exc}") from exc
    if reply.status == 200:
        _out(json.dumps(reply.body))  # v1: {"predictions": …}; v2: {"model_name", "outputs": …}
        return EXIT_OK
    code, message, request_id = _error_of(reply.body)
    request_id = request_id or reply.headers.get("x-request-id")
    detail = f"HTTP {reply.status} {code}: {message}"
    if reply.headers.get("retry-after"):
        detail += f"; retry after {reply.headers['retry-after']} s"
    if request_id:
        detail += f" (request id {request_id})"
    raise Failure(EXIT_FAILED, code, detail, status=reply.status, request_id=request_id)


def _error_of(body: Any) -> tuple[str, str, str | None]:
    """The code, message and request id of an error answer, in the Open Inference
    Protocol's shape (``{"error": "<message>", "code", "request_id"}``) or the earlier
    nested one (``{"error": {"code", "message", "request_id"}}``)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            body, error = error, error.get("message")
        if isinstance(error, str):
            request_id = body.get("request_id")
            return str(body.get("code") or "error"), error, str(request_id) if request_id else None
    text = body if isinstance(body, str) else json.dumps(body)
    return "error", text[:200], None


def _read_secret(value: str, env: str, flag: str) -> str:
    """A credential from the file a flag names (``-``: stdin), or from ``env`` for a bare flag."""
    if value == "":
        secret = os.environ.get(env, "").strip()
        if not secret:
            raise Failure(EXIT_USAGE, "invalid_argument", f"{flag} without a file: set ${env}")
        return secret
    if _SECRET_SHAPED.search(value):
        raise Failure(
            EXIT_USAGE,
            "invalid_argument",
            f"{flag} takes a file holding the credential, never the credential itself "
            f"(arguments are visible to everyone in ps): use a file, - for stdin, or ${env}",
        )
    try:
        secret = (sys.stdin.read() if value == "-" else Path(value).read_text("utf-8")).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise Failure(
            EXIT_USAGE, "invalid_argument", f"{flag}: cannot read {value}: {exc}"
        ) from exc
    if not secret:
        raise Failure(EXIT_USAGE, "invalid_argument", f"{flag}: {value} is empty")
    return secret


def _score_credential(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(API key, JWT): exactly one, from a file or the environment, never from argv."""
    if args.api_key is not None and args.jwt is not None:
        raise Failure(EXIT_USAGE, "invalid_argument", "give --api-key or --jwt, not both")
    if args.api_key is not None:
        return _read_secret(args.api_key, "SCOREGATE_API_KEY", "--api-key"), None
    if args.jwt is not None:
        return None, _read_secret(args.jwt, "SCOREGATE_JWT", "--jwt")
    key = os.environ.get("SCOREGATE_API_KEY", "").strip()
    token = os.environ.get("SCOREGATE_JWT", "").strip()
    if key and token:
        raise Failure(
            EXIT_USAGE,
            "invalid_argument",
            "both $SCOREGATE_API_KEY and $SCOREGATE_JWT are set: choose with --api-key or --jwt",
        )
    if not key and not token:
        raise Failure(
            EXIT_USAGE,
            "invalid_argument",
            "no credential: set $SCOREGATE_API_KEY or $SCOREGATE_JWT, or give --api-key FILE "
            "or --jwt FILE (keys and tokens are never taken as arguments)",
        )
    return key or None, token or None


def _read_input(path: str, what: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with Path(path).open("rb") as fh:
            data = fh.read(_MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise Failure(EXIT_USAGE, "invalid_argument", f"{what}: cannot read {path}: {exc}") from exc
    if len(data) > _MAX_IMAGE_BYTES:
        raise Failure(EXIT_USAGE, "invalid_argument", f"{what}: {path} is over 16 MiB")
    return data


def _score_request(args: argparse.Namespace, model: str) -> tuple[str, dict[str, Any]]:
    """The path and body: v1 ``instances``, a v2 request file, or an image as a v2 BYTES tensor."""
    outputs = [{"name": name} for name in args.output or ()]
    if args.instances is not None:
        if outputs:
            raise Failure(EXIT_USAGE, "invalid_argument", "--output is for v2 (--input, --image)")
        try:
            instances = json.loads(args.instances)
        except ValueError as exc:
            raise Failure(
                EXIT_USAGE,
                "invalid_argument",
                "--instances must be JSON, e.g. '[[5.1, 3.5, 1.4, 0.2]]'",
            ) from exc
        return f"/v1/models/{model}:predict", {"instances": instances}
    if args.input is not None:
        try:
            body = json.loads(_read_input(args.input, "--input"))
        except ValueError as exc:
            raise Failure(
                EXIT_USAGE, "invalid_argument", f"--input: {args.input} is not JSON ({exc})"
            ) from exc
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise Failure(
                EXIT_USAGE,
                "invalid_argument",
                f'--input: {args.input} is not a v2 inference request ({{"inputs": [...]}})',
            )
        if outputs:
            body["outputs"] = outputs
        return f"/v2/models/{model}/infer", body
    image = _read_input(args.image, "--image")
    if not any(image.startswith(magic) for magic in _IMAGE_MAGIC):
        raise Failure(EXIT_USAGE, "invalid_argument", f"--image: {args.image} is not a PNG or JPEG")
    tensor = {
        "name": args.input_name,
        "datatype": "BYTES",
        "shape": [1],
        "data": [base64.b64encode(image).decode("ascii")],
    }
    return f"/v2/models/{model}/infer", {
        "inputs": [tensor],
        **({"outputs": outputs} if outputs else {}),
    }


# -- audit ---------------------------------------------------------------------------
@contextlib.contextmanager
def _audit_trails(args: argparse.Namespace) -> Iterator[dict[str, list[Path]]]:
    """The trails to review, by name: the files and folders given (one trail), or each
    replica's chain in a Blob Storage container given by URL (downloaded to a temporary
    folder; DefaultAzureCredential reads it). Without arguments: the configured sink."""
    sources = list(args.paths)
    if not sources:
        settings = _settings(args)
        sources = [settings.audit_store_url or str(settings.audit_file.parent)]
    urls = [s for s in sources if s.startswith("https://")]
    trails: dict[str, list[Path]] = {}
    files = [Path(s) for s in sources if not s.startswith("https://")]
    if files:
        trails["local"] = files
    from gateway.audit.blobstore import download_store

    with tempfile.TemporaryDirectory(prefix="scoregate-audit-") as scratch:
        for n, url in enumerate(urls):
            downloaded = asyncio.run(download_store(url, Path(scratch) / str(n)))
            trails.update((replica, [folder]) for replica, folder in downloaded.items())
        yield trails


def _with_store(args: argparse.Namespace, use: Callable[[Any], Awaitable[T]]) -> T:
    """Run one store operation on the configured backend, closing the store after."""
    from gateway.secretstore.factory import open_store

    async def go() -> T:
        store = open_store(_settings(args))
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(go())


def cmd_audit(args: argparse.Namespace) -> int:
    from gateway.audit import review, signing

    command = args.audit_command
    if command == "keygen":
        signer = _with_store(args, signing.generate)
        pem = signing.public_key_pem(signer.private_key.public_key())
        if args.json:
            _out(json.dumps({"key_id": signer.key_id, "algorithm": "Ed25519", "public_key": pem}))
        else:
            _out(
                f"new audit signing key {signer.key_id}; checkpoints use it from the next "
                "gateway start; the earlier public keys stay listed (`scoregate audit "
                "public-key`) to verify what they signed"
            )
        return 0
    if command == "public-key":
        # Every enabled generation, oldest first: a trail signed across a key rotation
        # verifies with this whole list (`audit verify --public-key` reads every key in it).
        keys = _with_store(args, signing.public_keys)
        if not keys:
            _err("no audit signing key in the store")
            if args.json:
                _out(json.dumps({"error": "no audit signing key in the store", "code": "no_key"}))
            return 1
        newest = list(keys)[-1]
        for key_id, public in keys.items():
            pem = signing.public_key_pem(public)
            if args.json:
                doc = {"key_id": key_id, "algorithm": "Ed25519", "newest": key_id == newest}
                _out(json.dumps({**doc, "public_key": pem}))
            else:
                _out(f"# key id {key_id}{' (newest)' if key_id == newest else ''}\n{pem}")
        return 0
    try:
        if command == "verify":
            return _audit_verify(args)
        since = review.parse_time(args.since) if args.since else None
        until = review.parse_time(args.until) if args.until else None
        if command == "report":
            return _audit_report(args, since, until)
        return _audit_query(args, since, until)
    except FileNotFoundError as exc:
        _err(f"{exc.filename}: no such audit trail file")
        return 2


def _audit_query(args: argparse.Namespace, since: Any, until: Any) -> int:
    from gateway.audit import review

    where = review.Filter(
        since=None if args.key_usage else since,
        until=until,
        subject=args.subject,
        key_id=args.key_id,
        model=args.model,
        decision=args.decision,
        status=args.status,
        reason=args.reason,
    )
    with _audit_trails(args) as trails:
        paths = [path for group in trails.values() for path in group]
        if args.key_usage:
            return _audit_key_usage(args, review.query(paths, where), since)
        if not args.json:
            _out(review.table_header())
        for count, record in enumerate(review.query(paths, where), start=1):
            _out(json.dumps(record, sort_keys=True) if args.json else review.table_row(record))
            if args.limit and count >= args.limit:
                break
    return 0


def _audit_key_usage(
    args: argparse.Namespace, records: Iterator[dict[str, Any]], since: Any
) -> int:
    """Per key id and generation: what a rotation script reads before revoking one."""
    from gateway.audit import review
    from gateway.audit.report.summary import KeyUsage, Limits

    usage = KeyUsage(Limits())
    for record in records:
        if record.get("key_id"):
            when = review.record_time(record)
            usage.add(record, int(when.timestamp()), in_range=since is None or when >= since)
    rows = usage.rows()
    if args.json:
        for row in rows:
            _out(json.dumps(row, sort_keys=True))
        return 0
    _out(f"{'KEY ID':<18} {'GENERATION':<34} {'PRINCIPAL':<16} {'REQUESTS':>8}  LAST USED")
    for row in rows:
        _out(
            f"{row['key_id']:<18} {row['key_version']:<34} {row['principal'] or '-'!s:<16} "
            f"{row['requests']:>8}  {row['last_used']}"
        )
    return 0


def _audit_keys(args: argparse.Namespace) -> dict[str, Any] | None:
    """The checkpoint public keys to verify with; None with --chain-only, {} when none."""
    from gateway.audit import signing

    if args.chain_only:
        return None
    if args.public_key:
        return signing.load_public_key(args.public_key)
    return _with_store(args, signing.public_keys)


def _audit_report(args: argparse.Namespace, since: Any, until: Any) -> int:
    """Verify and summarise in one pass. Exit 0: every trail intact; 1: a trail is broken
    (the report is still written, its first line says BROKEN); 2: nothing to report on."""
    from gateway.audit.report import summarise
    from gateway.audit.report.figures import figures
    from gateway.audit.report.page import render_html
    from gateway.audit.report.text import render_text

    keys = _audit_keys(args)
    if keys is not None and not keys:
        _err("no public key to check checkpoint signatures: give --public-key or --chain-only")
        return 2
    with _audit_trails(args) as trails:  # every replica's records in one report
        if not trails:
            _err("no audit trail found (an empty container?)")
            return 2
        summary, integrity = summarise(
            trails,
            keys,
            since=since,
            until=until,
            partial=args.partial,
            max_unsigned=_settings(args).audit_checkpoint_every,
        )
    report = figures(summary, integrity, top=args.top)
    if args.html:
        args.html.write_text(render_html(report, summary), encoding="utf-8")
        if not args.json:
            _out(report["banner"])
            _out(f"wrote {args.html}")
    if args.json:
        _out(json.dumps(report, indent=2))
    elif not args.html:
        sys.stdout.write(render_text(report))
    return 0 if integrity.ok else 1


def _audit_verify(args: argparse.Namespace) -> int:
    from gateway.audit import review

    keys = _audit_keys(args)
    if keys is not None and not keys:
        _err("no public key to check checkpoint signatures: give --public-key or --chain-only")
        return 2
    broken = 0
    with _audit_trails(args) as trails:
        if not trails:
            _err("no audit trail found (an empty container?)")
            return 1
        for name, paths in trails.items():
            label = "" if list(trails) == ["local"] else f"{name}: "
            result = review.verify(
                paths,
                keys,
                partial=args.partial,
                max_unsigned=_settings(args).audit_checkpoint_every,
            )
            broken += _report_verify(label, result, keys is not None, from_store=name != "local")
    return 1 if broken else 0


def _report_verify(label: str, result: Any, signed_checked: bool, *, from_store: bool) -> int:
    from gateway.audit import review

    for note in result.notes:
        _out(f"{label}note: {note}")
    if not result.ok:
        _out(f"{label}BROKEN after {result.records} good records: {result.problem}")
        return 1
    if from_store and result.ended_without_checkpoint and signed_checked:
        # A replica that stopped without draining (killed, its node lost), or one still
        # running: complete as far as the chain shows, its last records not yet signed.
        _out(
            f"{label}note: ends without a final checkpoint (still running, or stopped "
            f"without draining): {result.unsigned_tail} records after the last one are "
            "chained but not signed"
        )
    signed = (
        review.describe_signing(result) if signed_checked else "chain only, signatures not checked"
    )
    _out(f"{label}ok: {result.records} records, chain intact; {signed}")
    return 0


# -- registry ------------------------------------------------------------------------
def cmd_registry(args: argparse.Namespace) -> int:
    """`registry rotate-pull-token`: the image-pull Secret's ACR token password renewed
    before it expires (gateway/ops/pulltoken.py; the CronJob in k8s/)."""
    from gateway.ops import pulltoken

    def body() -> int:
        try:
            request = pulltoken.Request.parse(
                token_id=args.token_id,
                secret=args.secret,
                lifetime=args.lifetime,
                renew_before=args.renew_before,
                arm_endpoint=args.arm_endpoint,
                login_server=args.login_server,
                service_account_dir=args.service_account_dir,
                force=args.force,
            )
            outcome = asyncio.run(pulltoken.run(request))
        except pulltoken.InvalidRequest as exc:
            raise Failure(EXIT_USAGE, exc.code, str(exc), **exc.extra) from exc
        except pulltoken.Refused as exc:
            raise Failure(EXIT_FAILED, exc.code, str(exc), **exc.extra) from exc
        except pulltoken.Failed as exc:
            raise Failure(EXIT_UNREACHABLE, exc.code, str(exc), **exc.extra) from exc
        _out(json.dumps(outcome.as_dict()) if args.json else outcome.summary())
        return EXIT_OK

    return _reporting(args, body)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scoregate", description="security-hardened HTTPS scoring gateway"
    )
    p.add_argument(
        "--state-dir", type=Path, help="generated state (default: ./var or $SCOREGATE_STATE_DIR)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway over HTTPS")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run the whole stack here and send real scored requests")
    demo.add_argument(
        "--once", action="store_true", help="exit after the requests (0 when all succeed)"
    )
    demo.add_argument("--port", type=int, default=8443, help="gateway HTTPS port")
    demo.add_argument("--scorer-port", type=int, default=9001, help="scikit-learn scorer")
    demo.add_argument("--gpu-scorer-port", type=int, default=9002, help="PyTorch scorer")
    demo.set_defaults(func=cmd_demo)

    # --json and the exit codes, shared by every keys and certs command.
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "--json", action="store_true", help="one JSON document (JSON lines for lists) on stdout"
    )
    raw = argparse.RawDescriptionHelpFormatter
    certs = sub.add_parser(
        "certs", help="dev CA and certificates", epilog=EXIT_CODES, formatter_class=raw
    )
    csub = certs.add_subparsers(dest="certs_command", required=True)
    init = csub.add_parser(
        "init", parents=[as_json], help="create the CA and the gateway's server certificate"
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    iss = csub.add_parser(
        "issue", parents=[as_json], help="issue (or with --force renew) a certificate"
    )
    iss.add_argument("name")
    iss.add_argument("--san", action="append", help="DNS name or IP (repeat)")
    iss.add_argument("--client", action="store_true", help="a client certificate (mTLS)")
    iss.add_argument("--force", action="store_true")
    shw = csub.add_parser(
        "show",
        parents=[as_json],
        help="certificates: subject, SANs, expiry, days left, SHA-256 fingerprint",
    )
    shw.add_argument("names", nargs="*", help="certificate names (default: all)")
    certs.set_defaults(func=cmd_certs)

    keys = sub.add_parser(
        "keys", help="API keys in the secret store", epilog=EXIT_CODES, formatter_class=raw
    )
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser(
        "create", parents=[as_json], help="issue a key; its secret is printed once"
    )
    create.add_argument("--owner", required=True)
    create.add_argument("--scope", action="append", required=True, help="e.g. models:iris (repeat)")
    create.add_argument("--expires", help="lifetime, e.g. 90d")
    rot = ksub.add_parser(
        "rotate",
        parents=[as_json],
        help="new generation; the old stays valid for --overlap",
        epilog=EXIT_CODES,
        formatter_class=raw,
    )
    rot.add_argument("key_id")
    rot.add_argument("--overlap", default="24h", help="how long the old generation stays valid")
    rot.add_argument(
        "--expires", help="the new generation's lifetime (default: the newest one's lifetime)"
    )
    rot.add_argument(
        "--deliver-to",
        metavar="URL",
        help="write the new key as a new version of this Key Vault secret "
        "(https://<vault>.vault.azure.net/secrets/<name>) instead of printing it",
    )
    ksub.add_parser(
        "list", parents=[as_json], help="every key generation and its state (no secrets)"
    )
    rev = ksub.add_parser(
        "revoke", parents=[as_json], help="disable a key (all generations, or one --version)"
    )
    rev.add_argument("key_id")
    rev.add_argument("--version")
    keys.set_defaults(func=cmd_keys)

    token = sub.add_parser("token", help="JWTs from the dev issuer (embedded store only)")
    tsub = token.add_subparsers(dest="token_command", required=True)
    mint = tsub.add_parser("mint", help="sign a token for a subject and scopes")
    mint.add_argument("--sub", required=True)
    mint.add_argument("--scope", action="append", help="e.g. models:iris (repeat)")
    mint.add_argument("--ttl", default="15m")
    mint.add_argument("--issuer", default="dev")
    token.set_defaults(func=cmd_token)

    score = sub.add_parser(
        "score",
        help="score through the gateway (credential from a file or $SCOREGATE_API_KEY/_JWT)",
        epilog=EXIT_CODES,
        formatter_class=raw,
    )
    score.add_argument("model")
    body = score.add_mutually_exclusive_group(required=True)
    body.add_argument("--instances", help="v1: JSON list of rows, e.g. '[[5.1, 3.5, 1.4, 0.2]]'")
    body.add_argument("--input", metavar="FILE", help="v2: a JSON inference request file (- stdin)")
    body.add_argument("--image", metavar="FILE", help="v2: a PNG or JPEG, as a BYTES tensor")
    score.add_argument("--input-name", default="image", help="the image tensor's name")
    score.add_argument("--output", action="append", help="v2: an output to ask for (repeat)")
    score.add_argument(
        "--api-key",
        nargs="?",
        const="",
        metavar="FILE",
        help="API key from FILE (- stdin), or bare: from $SCOREGATE_API_KEY",
    )
    score.add_argument(
        "--jwt",
        nargs="?",
        const="",
        metavar="FILE",
        help="bearer token from FILE (- stdin), or bare: from $SCOREGATE_JWT",
    )
    score.add_argument("--url", default="https://localhost:8443")
    score.add_argument("--ca", type=Path, help="CA to trust (default: the dev CA)")
    score.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    score.set_defaults(func=cmd_score)

    audit = sub.add_parser("audit", help="review the audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    paths_help = (
        "trail files or directories, or a Blob Storage container's URL (default: the "
        "configured audit sink)"
    )
    ver = asub.add_parser(
        "verify", help="check chain and signed checkpoints; non-zero at the first break"
    )
    ver.add_argument("paths", nargs="*", help=paths_help)
    qry = asub.add_parser("query", help="records matching filters, as a table or JSON lines")
    qry.add_argument("paths", nargs="*", help=paths_help)
    rep = asub.add_parser(
        "report",
        help="verify, then summarise a period as text, JSON or one HTML page; exit 0 intact, "
        "1 broken (the report says so first), 2 nothing to report on",
        description="Verify the trail and summarise a period in one pass; the first line "
        "(text), the banner key (JSON) or the banner (HTML) says INTACT or BROKEN. Exit "
        "status: 0 every trail intact; 1 a trail is broken (the report is still written); "
        "2 nothing to report on (no trail, a missing file, no public key).",
    )
    rep.add_argument("paths", nargs="*", help=paths_help)
    for p_ in (ver, rep):
        p_.add_argument(
            "--public-key", type=Path, help="PEM public key (default: from the secret store)"
        )
        p_.add_argument("--chain-only", action="store_true", help="skip signature checks")
        p_.add_argument(
            "--partial", action="store_true", help="accept a range that starts mid-chain"
        )
    for p_ in (qry, rep):
        p_.add_argument("--since", help="ISO time or an age such as 15m, 2h, 7d")
        p_.add_argument("--until", help="ISO time or an age")
        p_.add_argument("--json", action="store_true")
    for name in ("subject", "key-id", "model", "reason"):
        qry.add_argument(f"--{name}")
    qry.add_argument("--decision", choices=["allow", "deny"])
    qry.add_argument("--status", type=int)
    qry.add_argument("--limit", type=int, help="stop after N records")
    qry.add_argument(
        "--key-usage",
        action="store_true",
        help="per key id and generation: requests in the range, first and last use, clients",
    )
    rep.add_argument("--html", type=Path, help="write a self-contained HTML page here")
    rep.add_argument("--top", type=int, default=20, help="rows per top list (default 20)")
    asub.add_parser(
        "keygen",
        parents=[as_json],
        help="create a new checkpoint signing key (the earlier ones stay listed)",
    )
    asub.add_parser(
        "public-key",
        parents=[as_json],
        help="print every checkpoint public key (PEM), oldest first, for reviewers",
    )
    audit.set_defaults(func=cmd_audit)

    from gateway.ops import ROTATION_EXIT_CODES  # light: the job's modules load when run

    registry = sub.add_parser("registry", help="the image-pull credentials (a CronJob's)")
    rsub = registry.add_subparsers(dest="registry_command", required=True)
    pull = rsub.add_parser(
        "rotate-pull-token",
        parents=[as_json],
        help="renew the pull Secret's ACR token password before it expires (in a pod)",
        epilog=ROTATION_EXIT_CODES,
        formatter_class=raw,
    )
    pull.add_argument("--token-id", required=True, help="the ACR token's ARM resource id")
    pull.add_argument("--secret", required=True, help="the dockerconfigjson Secret to replace")
    pull.add_argument("--lifetime", default="30d", help="validity of a new password")
    pull.add_argument("--renew-before", default="10d", help="renew when this close to expiry")
    pull.add_argument("--arm-endpoint", help="default: https://management.azure.com")
    pull.add_argument("--login-server", help="default: <registry>.azurecr.io")
    pull.add_argument(
        "--service-account-dir",
        type=Path,
        help="the pod's API token, CA and namespace (default: the in-cluster path)",
    )
    pull.add_argument("--force", action="store_true", help="renew even if not due")
    registry.set_defaults(func=cmd_registry)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as exc:
        _err(f"invalid settings: {exc}")
        return 2
    except (CertificateError, SettingsError) as exc:
        _err(str(exc))
        return 2
