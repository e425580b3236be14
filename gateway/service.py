"""The gateway as one object: its components built from settings, started, stopped, and
judged ready. Built once in the entry point (`gateway.server`), served by the web layer.

    GatewaySettings ─▶ build_gateway() ─▶ Gateway
                                           ├── request_path(): the steps, holding the
                                           │         components they call
                                           ├── start(): keys, signer, JWKS and writer tasks
                                           ├── stop():  drain the audit queue, close all
                                           └── readiness(): keys, tasks, audit, limiter
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.signing import load_signer
from gateway.audit.sinks import AuditSink, FileSink, StdoutSink
from gateway.audit.trail import AuditTrail
from gateway.identity.credentials import Authenticator
from gateway.identity.issuers import load_issuers
from gateway.identity.jwks import JWKSKeys
from gateway.identity.keyring import KeyRing
from gateway.identity.tokens import JWTValidator
from gateway.metrics import GatewayMetrics
from gateway.policy import AccessPolicy, RouteTable
from gateway.ratelimit.bulkhead import Bulkheads
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.policy import RateLimitPolicy
from gateway.ratelimit.storage import StorageCredentials
from gateway.secretstore.factory import open_store
from gateway.secretstore.localfile import LocalSecretStore
from gateway.secretstore.protocol import SecretStore, SecretStoreError
from gateway.settings import GatewaySettings
from gateway.steps.path import RequestPath
from gateway.upstream.forwarder import Forwarder
from serving import tls

log = logging.getLogger("gateway")
# At shutdown, after the last request: how long the audit queue may take to drain.
AUDIT_DRAIN_TIMEOUT_S = 10.0


@dataclass
class Gateway:
    """Everything the request path needs, built once in the entry point."""

    settings: GatewaySettings
    store: SecretStore
    keys: KeyRing
    jwt: JWTValidator
    routes: RouteTable
    access: AccessPolicy
    forwarder: Forwarder
    limiter: Limiter
    audit: AuditTrail
    bulkheads: Bulkheads  # built from the settings by build_gateway
    jwks: list[JWKSKeys] = field(default_factory=list)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def request_path(self) -> RequestPath:
        """The request steps, bound to this gateway's components."""
        return RequestPath(
            settings=self.settings,
            authenticator=Authenticator(self.keys, self.jwt),
            routes=self.routes,
            access=self.access,
            limiter=self.limiter,
            forwarder=self.forwarder,
            audit=self.audit,
            metrics=self.metrics,
            bulkheads=self.bulkheads,
        )

    async def start(self) -> None:
        self.metrics.watch(
            staleness=self.keys.staleness_s,
            audit_depth=lambda: self.audit.depth,
            audit_lost=lambda: self.audit.lost,
            ratelimit_evicted=lambda: self.limiter.evicted,
        )
        for model in self.routes.models:
            route = self.routes.resolve(model)
            breaker = self.forwarder.breaker(route)
            breaker.on_change = self.metrics.circuit_changed(route.upstream_name)
        try:
            await self.keys.refresh()
        except SecretStoreError as exc:
            # Not ready until the keys load; the background refresh keeps trying.
            self.keys.last_error = str(exc)
            log.error("initial key load failed: %s", exc)
        try:
            # Checkpoint signing key; made on first start with the embedded store only.
            self.audit.signer = await load_signer(
                self.store, create=isinstance(self.store, LocalSecretStore)
            )
        except (SecretStoreError, ValueError) as exc:
            log.error("audit signing key unavailable, checkpoints off: %s", exc)
        if self.audit.signer is None:
            log.error("no audit signing key: the trail is hash-chained but not signed")
        jwks_tasks = []
        for issuer in self.jwt.issuers():
            url = issuer.jwks_url or issuer.discovery_url
            if url:
                fetcher = JWKSKeys(
                    issuer,
                    url,
                    self.jwt.set_issuer_keys,
                    discovery=issuer.discovery_url is not None,
                )
                self.jwt.on_unknown_kid(issuer.issuer, fetcher.unknown_kid)
                self.jwks.append(fetcher)
                jwks_tasks.append(asyncio.create_task(fetcher.run(), name=f"jwks-{issuer.name}"))
        self._tasks = [
            *jwks_tasks,
            asyncio.create_task(self.keys.run(), name="key-refresh"),
            asyncio.create_task(self.audit.run(), name="audit-writer"),
        ]
        store = self.audit.store
        if store is not None:
            # What this replica shipped before, and the spool it left, before any request.
            await store.start()
            self.metrics.audit_unshipped.set_function(lambda: store.unshipped_bytes)
            self._tasks.append(asyncio.create_task(store.run(), name="audit-shipper"))

    async def stop(self) -> None:
        # Drain the audit queue first: in-flight requests have finished by now.
        try:
            await asyncio.wait_for(self.audit.drain(), timeout=AUDIT_DRAIN_TIMEOUT_S)
        except TimeoutError:
            self.audit.lost += self.audit.depth
            log.error("audit drain timed out: %d records not written", self.audit.depth)
        store = self.audit.store
        if store is not None:
            # Everything in the spool goes to the store before the process ends; what the
            # store does not take in time stays in the spool for the next start.
            await store.flush(AUDIT_DRAIN_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.audit.close()
        if store is not None:
            await store.aclose()
        await self.limiter.close()
        await self.forwarder.close()
        await self.store.close()

    def live(self) -> bool:
        """Whether this process should keep running: every background task is. One that
        ended (the audit writer after repeated faults) needs a restart, which Kubernetes
        does when liveness fails; readiness alone would leave a replica answering 503."""
        return all(not task.done() for task in self._tasks)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this replica can serve: its own parts only (keys loaded and fresh, its
        background tasks alive, the audit trail accepting, the limiter's storage usable).

        The scorers are not part of it: a scorer that is down or slow makes its own models
        answer 503 (its breaker, `Retry-After`; `/v2/models/{model}/ready` says so), and
        never takes every replica out of the load balancer, other models included. The
        body is public (load balancers call it), so it names nothing internal: no
        upstream, no issuer, no error text (OWASP API8); the details are in the logs.
        """
        staleness = self.keys.staleness_s()
        limiter = self.limiter.state
        keys_fresh = staleness is not None and staleness <= self.settings.key_max_staleness_s
        # A background task that ended (it never should) makes the replica unfit to serve.
        tasks_alive = all(not task.done() for task in self._tasks)
        jwks_error = next((f.last_error for f in self.jwks if f.last_error), None)
        checks = {
            "keys_loaded": self.keys.loaded,
            "keys_fresh": keys_fresh,
            "keys_staleness_s": None if staleness is None else round(staleness, 1),
            "keys_last_error": _public_error(self.keys.last_error, "secret store"),
            "jwks_keys_loaded": all(f.keys for f in self.jwks),
            "jwks_last_error": _public_error(jwks_error, "JWKS endpoint"),
            "background_tasks_alive": tasks_alive,
            "audit_accepting": self.audit.accepting,
            "audit_signing": self.audit.signer is not None,
            "rate_limit_storage": limiter,
        }
        ready = keys_fresh and tasks_alive and self.audit.accepting and limiter != "closed"
        return ready, checks


def _public_error(error: str | None, source: str) -> str | None:
    return None if error is None else f"the {source} failed; details in the gateway's logs"


def build_audit(settings: GatewaySettings) -> AuditTrail:
    sink: AuditSink
    if settings.audit_store_url is not None:
        from azure.identity.aio import DefaultAzureCredential

        # Imported here: the Blob SDK loads only where the trail ships to a container.
        from gateway.audit.blobstore import BlobSink, open_container

        credential = DefaultAzureCredential()
        sink = BlobSink(
            open_container(settings.audit_store_url, credential),
            settings.audit_spool,
            credential=credential,
            max_spool_bytes=settings.audit_spool_max_bytes,
            fsync=settings.audit_fsync,
            ship_interval_s=settings.audit_ship_interval_s,
        )
    elif settings.audit_sink == "stdout":
        sink = StdoutSink()
    else:
        sink = FileSink(
            settings.audit_file,
            fsync=settings.audit_fsync,
            rotate_bytes=settings.audit_rotate_bytes,
            rotate_interval_s=settings.audit_rotate_interval_s,
        )
    return AuditTrail(
        sink,
        queue_size=settings.audit_queue_size,
        checkpoint_every=settings.audit_checkpoint_every,
        checkpoint_interval_s=settings.audit_checkpoint_interval_s,
        linger_s=settings.audit_linger_ms / 1000,
    )


def build_gateway(settings: GatewaySettings) -> Gateway:
    routes = RouteTable.load(settings.routes_file)
    store = open_store(settings)
    limits = RateLimitPolicy.load(settings.rate_limit_policy_file, routes.models)
    validator = JWTValidator(load_issuers(settings.jwt_issuers_file))
    return Gateway(
        settings=settings,
        store=store,
        keys=KeyRing(
            store,
            refresh_interval_s=settings.key_refresh_interval_s,
            on_jwt_keys=validator.set_keys,
        ),
        jwt=validator,
        routes=routes,
        access=AccessPolicy.load(settings.access_policy_file, routes),
        forwarder=Forwarder(
            max_response_bytes=settings.max_response_bytes,
            buffer_bytes=settings.upstream_buffer_bytes,
            tls=tls.upstream_context(
                settings.upstream_ca, settings.upstream_client_cert, settings.upstream_client_key
            ),
        ),
        limiter=Limiter(
            limits,
            settings.rate_limit_storage,
            settings.rate_limit_on_storage_failure,
            settings.rate_limit_memory_max_keys,
            StorageCredentials.load(
                settings.rate_limit_storage_username, settings.rate_limit_storage_password_file
            ),
        ),
        audit=build_audit(settings),
        bulkheads=Bulkheads(
            per_model=settings.max_in_flight_per_model,
            per_principal=settings.max_in_flight_per_principal,
        ),
    )
