"""The rendered manifests configure the real programs correctly: the gateway's and the
scorers' settings parse from the pods' environment, the policy ConfigMap loads with the
gateway's own loaders and routes to Services that exist, and the TLS file layout Key
Vault produces loads. Redis as the manifest starts it, ACL and all, runs in
tests/k8s/test_rendered_cluster.py.
"""

from __future__ import annotations

import math
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from certs.authority import CertPaths
from gateway.identity.issuers import load_issuers
from gateway.policy import AccessPolicy, RouteTable
from gateway.ratelimit.policy import RateLimitPolicy
from gateway.settings import GatewaySettings, unknown_environment
from scorer.settings import ScorerSettings
from serving import tls
from tests.k8s.conftest import Rendered


def container(overlay: Rendered, deployment: str, name: str) -> dict[str, Any]:
    spec = overlay.get("Deployment", deployment)["spec"]["template"]["spec"]
    (found,) = [c for c in spec["containers"] if c["name"] == name]
    return found


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ("4", "500m") in cores."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def environment(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet sets it: literal values, and resource
    fields (`limits.cpu` in whole cores, rounded up, as with the default divisor 1)."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        field = e["valueFrom"]["resourceFieldRef"]
        assert field["resource"] == "limits.cpu" and field.get("divisor", "1") == "1", field
        env[e["name"]] = str(math.ceil(cpu_cores(c["resources"]["limits"]["cpu"])))
    return env


def mounts(overlay: Rendered, deployment: str, c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Mount path -> the volume mounted there."""
    volumes = {
        v["name"]: v
        for v in overlay.get("Deployment", deployment)["spec"]["template"]["spec"]["volumes"]
    }
    return {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}


def test_gateway_settings_parse_from_the_pod_environment(
    overlay: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = container(overlay, "gateway", "gateway")
    env = environment(gateway)
    # The gateway refuses to start on an unknown SCOREGATE_* variable.
    assert unknown_environment(env) == []
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert (settings.host, settings.port) == ("0.0.0.0", 8443)  # noqa: S104 - in a pod
    assert settings.port == gateway["ports"][0]["containerPort"]
    assert settings.secret_store == "keyvault"
    assert settings.keyvault_verify_challenge_resource is True
    # The audit trail ships to Blob Storage from a spool on a volume of its own, bounded
    # below that volume's size limit (past it the kubelet evicts the pod).
    assert settings.audit_store_url is not None
    assert settings.audit_store_url.startswith("https://")
    spool = mounts(overlay, "gateway", gateway)[str(settings.audit_spool)]
    limit = spool["emptyDir"]["sizeLimit"]
    assert limit.endswith("Mi") and settings.audit_spool_max_bytes < int(limit[:-2]) * 2**20
    assert settings.trusted_proxy_hops == 0
    assert settings.rate_limit_storage == "async+redis://redis:6379"
    assert settings.rate_limit_storage_username == "gateway"
    # Metrics on the pod's address (the scraper comes from another pod), on the named port.
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", ports["metrics"])  # noqa: S104
    volumes = mounts(overlay, "gateway", gateway)
    # Policies from the ConfigMap, TLS from the CSI volume, state on an emptyDir.
    policy_dir = settings.routes_file.parent
    assert "configMap" in volumes[str(policy_dir)]
    for path in (
        settings.access_policy_file,
        settings.jwt_issuers_file,
        settings.rate_limit_policy_file,
    ):
        assert path.parent == policy_dir
    assert "csi" in volumes[str(settings.cert_path.parent)]
    assert "emptyDir" in volumes[str(settings.state_dir)]


def test_scorer_settings_parse_from_the_pod_environment(
    overlay: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtimes = {"scorer-cpu": ("sklearn",), "scorer-gpu": ("torch",)}
    for deployment in runtimes.keys() & {d["metadata"]["name"] for d in overlay.workloads()}:
        scorer = container(overlay, deployment, "scorer")
        with monkeypatch.context() as m:
            for name, value in environment(scorer).items():
                m.setenv(name, value)
            settings = ScorerSettings()
        assert settings.runtimes == runtimes[deployment]
        ports = {p["name"]: p["containerPort"] for p in scorer["ports"]}
        assert settings.port == ports["http"]
        assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", ports["metrics"])  # noqa: S104
        # The models volume: filled by the init container, read-only for the scorer.
        (models,) = [
            m for m in scorer["volumeMounts"] if m["mountPath"] == str(settings.repository)
        ]
        assert models["readOnly"] is True
        init = overlay.get("Deployment", deployment)["spec"]["template"]["spec"]["initContainers"]
        (copy_mount,) = init[0]["volumeMounts"]
        assert copy_mount["name"] == models["name"] and init[0]["args"] == [copy_mount["mountPath"]]


def test_policy_configmap_loads_and_routes_to_existing_services(
    overlay: Rendered, tmp_path: Path
) -> None:
    (configmap,) = overlay.of_kind("ConfigMap")
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    routes = RouteTable.load(tmp_path / "routes.toml")
    AccessPolicy.load(tmp_path / "access.toml", routes)
    RateLimitPolicy.load(tmp_path / "ratelimits.toml", routes.models)
    assert load_issuers(tmp_path / "issuers.toml") == []  # API keys only until you add one
    gateway_spec = overlay.get("Deployment", "gateway")["spec"]["template"]["spec"]
    assert {"name": configmap["metadata"]["name"], "defaultMode": 0o444} in [
        v.get("configMap") for v in gateway_spec["volumes"]
    ]
    services = {
        (s["metadata"]["name"], p["port"])
        for s in overlay.of_kind("Service")
        if s["spec"]["type"] == "ClusterIP"
        for p in s["spec"]["ports"]
    }
    urls = [urlsplit(str(u.url)) for u in routes.upstreams().values()]
    upstreams = {(url.hostname, url.port) for url in urls}
    assert upstreams <= services
    expected = {"cpu": ("iris",), "gpu": ("iris", "digits"), "production": ("iris", "digits")}
    assert routes.models == expected[overlay.overlay]
    # Each scorer Service is routed to: no scorer runs without a route, none is missing.
    scorer_services = {s for s in services if s[0].startswith("scorer-")}
    assert upstreams == scorer_services


# -- TLS: the file the CSI driver writes ---------------------------------------------------
def handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> ssl.SSLObject:
    """A TLS handshake between two contexts in memory; returns the client's side."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname=name)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client_side, server_side):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert client_side.version() is not None, "handshake did not complete"
    return client_side


def test_key_vault_pem_with_key_and_chain_in_one_file_serves_tls(
    pki: CertPaths, tmp_path: Path
) -> None:
    """A Key Vault certificate read as a secret is one PEM: private key, then the chain.
    The gateway gets that one file as both SCOREGATE_TLS_CERT and SCOREGATE_TLS_KEY."""
    combined = tmp_path / "gateway.pem"
    combined.write_bytes(
        pki.key("gateway").read_bytes()
        + pki.cert("gateway").read_bytes()
        + pki.ca_cert.read_bytes()
    )
    server = tls.server_context(combined, combined)
    client = tls.client_context(pki.ca_cert)
    peer = handshake(server, client, "localhost").getpeercert()
    assert peer is not None and ("DNS", "localhost") in peer["subjectAltName"]
    # objectType "cert" would give the certificate without its key: the start fails.
    cert_only = tmp_path / "cert-only.pem"
    cert_only.write_bytes(pki.cert("gateway").read_bytes())
    with pytest.raises(ssl.SSLError):
        tls.server_context(cert_only, cert_only)
