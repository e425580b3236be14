"""SECURITY-CATALOG, Kubernetes: default-deny NetworkPolicy for ingress and egress, only
the intended paths open; the matrix is derived from the rendered manifests.

The evaluator (tests/k8s/netpol.py) is checked twice: against small policies whose answer
the Kubernetes documentation gives, and against broken copies of our own policies, which
it must catch, so that a passing matrix means something.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.k8s.conftest import NAMESPACE, Rendered
from tests.k8s.netpol import Cluster, Endpoint, matrix

# Outside the namespace: addresses the gateway talks to or must not, and pods elsewhere.
EXTERNAL = (
    Endpoint("internet", "198.51.100.7", ports={(443, "TCP"): "", (80, "TCP"): ""}),
    Endpoint("keyvault", "20.38.0.10", ports={(443, "TCP"): ""}),
    # Azure Resource Manager, and an AKS API server (kubernetes.default.svc's endpoint: a
    # public address on a public cluster).
    Endpoint("arm", "4.150.240.10", ports={(443, "TCP"): ""}),
    Endpoint("kube-apiserver", "20.61.93.7", ports={(443, "TCP"): ""}),
    Endpoint("imds", "169.254.169.254", ports={(80, "TCP"): "", (443, "TCP"): ""}),
    Endpoint("azure-platform", "168.63.129.16", ports={(443, "TCP"): "", (53, "UDP"): ""}),
    Endpoint("vnet-host", "10.1.0.4", ports={(443, "TCP"): "", (5432, "TCP"): ""}),
    Endpoint(
        "kube-dns",
        "10.244.9.10",
        "kube-system",
        {"k8s-app": "kube-dns"},
        {(53, "UDP"): "dns", (53, "TCP"): "dns-tcp"},
    ),
    Endpoint("other-pod", "10.244.9.20", "default", {"app": "other"}, {(8080, "TCP"): "http"}),
    # Azure Managed Prometheus: its replica pod runs custom scrape jobs (the PodMonitor);
    # its per-node DaemonSet scrapes only the cluster's defaults.
    Endpoint("ama-metrics", "10.244.9.30", "kube-system", {"rsName": "ama-metrics"}),
    Endpoint("ama-metrics-node", "10.244.9.31", "kube-system", {"dsName": "ama-metrics-node"}),
)


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"])
    return dict(workload["spec"]["template"])


def workload_endpoints(docs: list[dict[str, Any]]) -> list[Endpoint]:
    """One pod per Deployment and CronJob: its template's labels and its containers' ports."""
    pods = []
    workloads = [d for d in docs if d["kind"] in {"Deployment", "CronJob"}]
    for i, deployment in enumerate(workloads):
        template = pod_template(deployment)
        ports = {
            (p["containerPort"], p.get("protocol", "TCP")): p.get("name", "")
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        }
        pods.append(
            Endpoint(
                deployment["metadata"]["name"],
                f"10.244.0.{10 + i}",
                deployment["metadata"]["namespace"],
                template["metadata"]["labels"],
                ports,
            )
        )
    return pods


def cluster_of(docs: list[dict[str, Any]]) -> Cluster:
    namespaces = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    labels = {
        name: {"kubernetes.io/metadata.name": name}  # the API server sets this label
        for name in [*namespaces, "kube-system", "default"]
    }
    for d in docs:
        if d["kind"] == "Namespace":
            labels[d["metadata"]["name"]].update(d["metadata"].get("labels", {}))
    return Cluster(docs, labels)


def reachability(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    endpoints = [*workload_endpoints(docs), *EXTERNAL]
    return matrix(cluster_of(docs), endpoints, NAMESPACE)


def intended(scorers: dict[str, int]) -> set[tuple[str, str, str]]:
    """What the design allows (DESIGN.md, Kubernetes), and nothing else."""
    # From outside the namespace, only the gateway's HTTPS port.
    paths = {(e.name, "gateway", "8443/TCP") for e in EXTERNAL}
    # Inside, only the gateway opens connections: to each scorer and to Redis…
    paths |= {("gateway", name, f"{port}/TCP") for name, port in scorers.items()}
    paths.add(("gateway", "redis", "6379/TCP"))
    # …and out: cluster DNS, and HTTPS to public addresses (Key Vault, Entra ID), never
    # to private ranges, the metadata service or Azure's platform address.
    paths |= {("gateway", "kube-dns", "53/UDP"), ("gateway", "kube-dns", "53/TCP")}
    public_https = ("keyvault", "arm", "kube-apiserver", "internet")
    paths |= {("gateway", name, "443/TCP") for name in public_https}
    # The rotation jobs (nothing reaches them): cluster DNS, and HTTPS to public
    # addresses (Key Vault, Entra ID, ARM, the API server), as the gateway.
    for job in ("rotate-api-key", "rotate-pull-token"):
        paths |= {(job, "kube-dns", "53/UDP"), (job, "kube-dns", "53/TCP")}
        paths |= {(job, name, "443/TCP") for name in public_https}
    # Metrics: the scraper alone, to each pod's metrics port and nothing else of it.
    paths.add(("ama-metrics", "gateway", "9100/TCP"))
    paths |= {("ama-metrics", name, "9101/TCP") for name in scorers}
    return paths


SCORERS = {
    "cpu": {"scorer-cpu": 9001},
    "gpu": {"scorer-cpu": 9001, "scorer-gpu": 9002},
    "production": {"scorer-cpu": 9001, "scorer-gpu": 9002},
}


def describe(paths: set[tuple[str, str, str]]) -> str:
    return "\n".join(f"  {s} -> {d} {p}" for s, d, p in sorted(paths)) or "  (none)"


def test_only_the_intended_paths_are_open(overlay: Rendered) -> None:
    computed = reachability(overlay.docs)
    expected = intended(SCORERS[overlay.overlay])
    assert computed == expected, (
        f"{overlay.overlay}: open but not intended:\n{describe(computed - expected)}\n"
        f"intended but closed:\n{describe(expected - computed)}"
    )


def test_every_pod_is_isolated_both_ways(overlay: Rendered) -> None:
    """Default deny selects every pod of the namespace for ingress and egress, so a
    workload added later starts closed rather than open."""
    deny = overlay.get("NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny["spec"].get("ingress") and not deny["spec"].get("egress")
    newcomer = Endpoint("newcomer", "10.244.0.99", NAMESPACE, {"app": "new"}, {(80, "TCP"): ""})
    cluster = cluster_of(overlay.docs)
    everyone = [*workload_endpoints(overlay.docs), *EXTERNAL]
    assert not any(cluster.allowed(e, newcomer, 80) for e in everyone)
    assert not any(cluster.allowed(newcomer, e, p, proto) for e in everyone for p, proto in e.ports)


# -- the evaluator catches broken policies -------------------------------------------------
def mutated(
    rendered: dict[str, Rendered], name: str, change: Callable[[dict[str, Any]], Any]
) -> list[dict[str, Any]]:
    """The cpu overlay's documents with one NetworkPolicy changed (None from `change`
    removes it)."""
    docs = copy.deepcopy(rendered["cpu"].docs)
    (target,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == name]
    if change(target) is None:
        docs.remove(target)
    return docs


def drop_except(policy: dict[str, Any]) -> dict[str, Any]:
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to", []):
            peer.get("ipBlock", {}).pop("except", None)
    return policy


def open_to_all(policy: dict[str, Any]) -> dict[str, Any]:
    del policy["spec"]["ingress"][0]["from"]
    return policy


def typo_in_selector(policy: dict[str, Any]) -> dict[str, Any]:
    policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] = "scorer"
    return policy


def other_namespace(policy: dict[str, Any]) -> dict[str, Any]:
    policy["metadata"]["namespace"] = "default"  # a component that missed `namespace:`
    return policy


@pytest.mark.parametrize(
    ("name", "change", "opened", "closed"),
    [
        pytest.param(
            "default-deny",
            lambda p: None,
            # Ingress stays closed (each pod has its own ingress policy); egress opens.
            {("scorer-cpu", "internet", "443/TCP"), ("redis", "vnet-host", "5432/TCP")},
            set(),
            id="no-default-deny",
        ),
        pytest.param(
            "gateway-egress",
            drop_except,
            {("gateway", "vnet-host", "443/TCP"), ("gateway", "imds", "443/TCP")},
            set(),
            id="https-egress-without-private-ranges-excepted",
        ),
        pytest.param(
            "rotation-egress",
            drop_except,
            {("rotate-pull-token", "imds", "443/TCP"), ("rotate-api-key", "vnet-host", "443/TCP")},
            set(),
            id="rotation-jobs-egress-without-private-ranges-excepted",
        ),
        pytest.param(
            "rotation-egress",
            lambda p: None,
            # Default deny keeps a job's egress closed without its policy.
            set(),
            {
                ("rotate-pull-token", "kube-apiserver", "443/TCP"),
                ("rotate-api-key", "keyvault", "443/TCP"),
            },
            id="rotation-jobs-without-their-egress-reach-nothing",
        ),
        pytest.param(
            "scorer-cpu-ingress",
            open_to_all,
            {("internet", "scorer-cpu", "9001/TCP"), ("other-pod", "scorer-cpu", "9001/TCP")},
            set(),
            id="scorer-open-to-every-source",
        ),
        pytest.param(
            "scorer-cpu-ingress",
            typo_in_selector,
            set(),
            {("gateway", "scorer-cpu", "9001/TCP")},
            id="selector-typo-closes-the-scorer",
        ),
        pytest.param(
            "metrics-ingress",
            open_to_all,
            {("internet", "gateway", "9100/TCP"), ("ama-metrics-node", "scorer-cpu", "9101/TCP")},
            set(),
            id="metrics-open-to-every-source",
        ),
        pytest.param(
            "redis-ingress",
            other_namespace,
            set(),
            {("gateway", "redis", "6379/TCP")},
            id="policy-in-another-namespace",
        ),
    ],
)
def test_the_matrix_catches_a_broken_policy(
    rendered: dict[str, Rendered],
    name: str,
    change: Callable[[dict[str, Any]], Any],
    opened: set[tuple[str, str, str]],
    closed: set[tuple[str, str, str]],
) -> None:
    computed = reachability(mutated(rendered, name, change))
    expected = intended(SCORERS["cpu"])
    assert computed != expected
    assert opened <= computed - expected
    assert closed <= expected - computed


# -- the evaluator against the documented semantics ----------------------------------------
def policy(spec: dict[str, Any], namespace: str = "ns") -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": namespace}, **spec}


A = Endpoint("a", "10.0.0.1", "ns", {"app": "a"}, {(80, "TCP"): "http", (53, "UDP"): "dns"})
B = Endpoint("b", "10.0.0.2", "ns", {"app": "b", "tier": "web"}, {(80, "TCP"): "http"})
C = Endpoint("c", "10.0.1.3", "other", {"app": "b"}, {(80, "TCP"): "http"})
NS_LABELS = {"ns": {"team": "x"}, "other": {"team": "y"}}


def test_no_policy_means_open_and_a_selecting_policy_means_closed() -> None:
    assert Cluster([], NS_LABELS).allowed(A, B, 80)
    deny_b = policy({"spec": {"podSelector": {"matchLabels": {"app": "b"}}}})
    cluster = Cluster([deny_b], NS_LABELS)
    assert not cluster.allowed(A, B, 80)  # policyTypes defaults to Ingress
    assert cluster.allowed(B, A, 80)  # egress of b is not isolated


def test_policy_types_default_to_egress_when_egress_rules_exist() -> None:
    p = policy(
        {"spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}}
    )
    cluster = Cluster([p], NS_LABELS)
    assert cluster.allowed(A, B, 53, "UDP") is False  # b is isolated for ingress too
    assert cluster.allowed(A, Endpoint("x", "8.8.8.8", ports={(53, "UDP"): ""}), 53, "UDP")
    assert not cluster.allowed(A, Endpoint("x", "8.8.8.8", ports={(53, "TCP"): ""}), 53, "TCP")


def test_pod_and_namespace_selector_in_one_peer_are_anded_in_two_peers_ored() -> None:
    both = {"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {}}
    anded = policy(
        {"spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": [both]}]}}
    )
    cluster = Cluster([anded], NS_LABELS)
    assert cluster.allowed(C, A, 80)
    assert not cluster.allowed(B, A, 80)  # same namespace, but not team y
    either = [{"namespaceSelector": {"matchLabels": {"team": "y"}}}, {"podSelector": {}}]
    ored = policy(
        {"spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": either}]}}
    )
    assert Cluster([ored], NS_LABELS).allowed(B, A, 80)


def test_named_ports_match_expressions_and_port_ranges() -> None:
    named = policy(
        {
            "spec": {
                "podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                "ingress": [{"ports": [{"port": "http"}]}],
            }
        }
    )
    cluster = Cluster([named], NS_LABELS)
    assert cluster.allowed(A, B, 80)
    other_port = Endpoint("b2", "10.0.0.5", "ns", {"tier": "web"}, {(81, "TCP"): "metrics"})
    assert not cluster.allowed(A, other_port, 81)
    ranged = policy(
        {"spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 90}]}]}}
    )
    assert Cluster([ranged], NS_LABELS).allowed(A, other_port, 81)
    assert not Cluster([ranged], NS_LABELS).allowed(A, other_port, 91)


def test_ip_blocks_honour_their_exceptions() -> None:
    egress = policy(
        {
            "spec": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}],
            }
        }
    )
    cluster = Cluster([egress], NS_LABELS)
    assert cluster.allowed(A, Endpoint("pub", "52.1.2.3", ports={(443, "TCP"): ""}), 443)
    assert not cluster.allowed(A, Endpoint("vnet", "10.9.9.9", ports={(443, "TCP"): ""}), 443)
    assert not cluster.allowed(A, B, 80)  # pod addresses fall in the excepted range
