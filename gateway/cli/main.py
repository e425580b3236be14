"""``scoregate``: one command line for the people who run, call and review the gateway.

scoregate serve                       run the gateway (HTTPS)
scoregate demo [--once]               the whole stack on this machine, with real requests
scoregate certs init|issue|show       the dev CA and certificates
scoregate keys create|list|revoke     API keys in the secret store
scoregate score MODEL --instances …   call the gateway as a client
scoregate audit verify PATH…          check the audit trail's hash chain
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from certs.authority import (
    DEFAULT_SERVER_NAMES,
    CertificateError,
    CertPaths,
    create_ca,
    issue,
    load_certificate,
)
from gateway.settings import GatewaySettings, unknown_environment

T = TypeVar("T")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(f"scoregate: {line}\n")


class SettingsError(Exception):
    pass


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
    paths = CertPaths(_settings(args).state_dir / "certs")
    if args.certs_command == "init":
        create_ca(paths, force=args.force)
        _out(f"created CA {paths.ca_cert}")
        issue(paths, "gateway", force=True)
        _out(f"issued {paths.cert('gateway')} for {', '.join(DEFAULT_SERVER_NAMES)}")
    elif args.certs_command == "issue":
        names = tuple(args.san or DEFAULT_SERVER_NAMES)
        issue(paths, args.name, server_names=names, client=args.client, force=args.force)
        kind = "client" if args.client else "server"
        _out(f"issued {paths.cert(args.name)} ({kind}) for {', '.join(names)}")
    else:
        for pem in sorted(paths.root.glob("*.pem")):
            cert = load_certificate(pem)
            subject = cert.subject.rfc4514_string()
            expires = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
            _out(f"{pem.name:<16} {subject:<28} expires {expires}")
    return 0


# -- keys ----------------------------------------------------------------------------
def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.identity import lifecycle
    from gateway.secretstore.factory import open_store
    from gateway.secretstore.protocol import SecretStoreError

    settings = _settings(args)

    async def go() -> int:
        store = open_store(settings)
        try:
            return await keys_command(store)
        finally:
            await store.close()

    async def keys_command(store: Any) -> int:
        if args.keys_command == "create":
            expires = lifecycle.parse_duration(args.expires) if args.expires else None
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
                    f"key id {info['key_id']} for {info['owner']} ({info['scopes']}): "
                    "store the key now, it is not shown again\n"
                )
        elif args.keys_command == "rotate":
            issued = await lifecycle.rotate(
                store, args.key_id, overlap=lifecycle.parse_duration(args.overlap)
            )
            _out(issued.key)  # shown once, like at creation
            sys.stderr.write(
                f"new generation {issued.generation.version} of {args.key_id}; the previous "
                f"ones stay valid for {args.overlap}: store the key now, it is not shown again\n"
            )
        elif args.keys_command == "list":
            rows = [lifecycle.describe(g) for g in await lifecycle.list_keys(store)]
            if args.json:
                for row in rows:
                    _out(json.dumps(row))
            else:
                widths = {"key_id": 17, "version": 33, "state": 8, "owner": 12, "expires_on": 26}
                _out(" ".join(f"{c.upper():<{w}}" for c, w in widths.items()) + " SCOPES")
                for r in rows:
                    _out(" ".join(f"{r[c]:<{w}}" for c, w in widths.items()) + f" {r['scopes']}")
        else:
            for generation in await lifecycle.revoke(store, args.key_id, args.version):
                _out(f"revoked {generation.key_id} version {generation.version}")
        return 0

    try:
        return asyncio.run(go())
    except (lifecycle.KeyAdminError, SecretStoreError) as exc:
        _err(str(exc))
        return 2


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
def cmd_score(args: argparse.Namespace) -> int:
    from gateway.client import call

    settings = _settings(args)
    api_key = os.environ.get("SCOREGATE_API_KEY")
    if not api_key:
        _err("set SCOREGATE_API_KEY to the API key (keys are never taken as arguments)")
        return 2
    try:
        instances = json.loads(args.instances)
    except ValueError:
        _err("--instances must be JSON, e.g. '[[5.1, 3.5, 1.4, 0.2]]'")
        return 2
    ca = args.ca or settings.ca_path
    url = f"{args.url.rstrip('/')}/v1/models/{args.model}:predict"
    reply = call(url, ca=ca, method="POST", payload={"instances": instances}, api_key=api_key)
    _out(json.dumps(reply.body))
    return 0 if reply.status == 200 else 1


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
        _out(
            f"new audit signing key {signer.key_id}; checkpoints use it from the next gateway start"
        )
        return 0
    if command == "public-key":
        keys = _with_store(args, signing.public_keys)
        if not keys:
            _err("no audit signing key in the store")
            return 1
        for key_id, public in keys.items():
            _out(f"# key id {key_id}\n{signing.public_key_pem(public)}")
        return 0
    if command == "verify":
        return _audit_verify(args)
    since = review.parse_time(args.since) if args.since else None
    until = review.parse_time(args.until) if args.until else None
    if command == "query":
        where = review.Filter(
            since=since,
            until=until,
            subject=args.subject,
            key_id=args.key_id,
            model=args.model,
            decision=args.decision,
            status=args.status,
            reason=args.reason,
        )
        if not args.json:
            _out(review.table_header())
        with _audit_trails(args) as trails:
            paths = [path for group in trails.values() for path in group]
            for count, record in enumerate(review.query(paths, where), start=1):
                _out(json.dumps(record, sort_keys=True) if args.json else review.table_row(record))
                if args.limit and count >= args.limit:
                    break
        return 0
    with _audit_trails(args) as trails:  # every replica's records in one report
        paths = [path for group in trails.values() for path in group]
        records = review.query(paths, review.Filter(since=since, until=until))
        report = review.build_report(
            records, since.isoformat() if since else None, until.isoformat() if until else None
        )
    if args.html:
        args.html.write_text(review.render_html(report), encoding="utf-8")
        _out(f"wrote {args.html}")
    if args.json:
        _out(json.dumps(report.as_dict(), indent=2))
    elif not args.html:
        sys.stdout.write(review.render_text(report))
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from gateway.audit import review, signing

    keys = None
    if not args.chain_only:
        keys = (
            signing.load_public_key(args.public_key)
            if args.public_key
            else _with_store(args, signing.public_keys)
        )
        if not keys:
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

    certs = sub.add_parser("certs", help="dev CA and certificates")
    csub = certs.add_subparsers(dest="certs_command", required=True)
    init = csub.add_parser("init", help="create the CA and the gateway's server certificate")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    iss = csub.add_parser("issue", help="issue (or with --force renew) a certificate")
    iss.add_argument("name")
    iss.add_argument("--san", action="append", help="DNS name or IP (repeat)")
    iss.add_argument("--client", action="store_true", help="a client certificate (mTLS)")
    iss.add_argument("--force", action="store_true")
    csub.add_parser("show", help="list certificates and their expiry")
    certs.set_defaults(func=cmd_certs)

    keys = sub.add_parser("keys", help="API keys in the secret store")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="issue a key; its secret is printed once")
    create.add_argument("--owner", required=True)
    create.add_argument("--scope", action="append", required=True, help="e.g. models:iris (repeat)")
    create.add_argument("--expires", help="lifetime, e.g. 90d")
    create.add_argument("--json", action="store_true")
    rot = ksub.add_parser("rotate", help="new generation; the old stays valid for --overlap")
    rot.add_argument("key_id")
    rot.add_argument("--overlap", default="24h", help="how long the old generation stays valid")
    lst = ksub.add_parser("list", help="every key generation and its state (no secrets)")
    lst.add_argument("--json", action="store_true")
    rev = ksub.add_parser("revoke", help="disable a key (all generations, or one --version)")
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
        "score", help="score instances through the gateway (key in $SCOREGATE_API_KEY)"
    )
    score.add_argument("model")
    score.add_argument("--instances", required=True, help="JSON list of rows")
    score.add_argument("--url", default="https://localhost:8443")
    score.add_argument("--ca", type=Path, help="CA to trust (default: the dev CA)")
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
    ver.add_argument(
        "--public-key", type=Path, help="PEM public key (default: from the secret store)"
    )
    ver.add_argument("--chain-only", action="store_true", help="skip signature checks")
    ver.add_argument("--partial", action="store_true", help="accept a range that starts mid-chain")
    qry = asub.add_parser("query", help="records matching filters, as a table or JSON lines")
    qry.add_argument("paths", nargs="*", help=paths_help)
    rep = asub.add_parser("report", help="summary for a period, as text, JSON or an HTML page")
    rep.add_argument("paths", nargs="*", help=paths_help)
    for p_ in (qry, rep):
        p_.add_argument("--since", help="ISO time or an age such as 15m, 2h, 7d")
        p_.add_argument("--until", help="ISO time or an age")
        p_.add_argument("--json", action="store_true")
    for name in ("subject", "key-id", "model", "reason"):
        qry.add_argument(f"--{name}")
    qry.add_argument("--decision", choices=["allow", "deny"])
    qry.add_argument("--status", type=int)
    qry.add_argument("--limit", type=int, help="stop after N records")
    rep.add_argument("--html", type=Path, help="write a self-contained HTML page here")
    asub.add_parser("keygen", help="create a new checkpoint signing key in the secret store")
    asub.add_parser("public-key", help="print the checkpoint public keys (PEM) for reviewers")
    audit.set_defaults(func=cmd_audit)
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
