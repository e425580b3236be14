"""Who can reach whom, computed from NetworkPolicy objects as Kubernetes defines it.

A small evaluator of the networking.k8s.io/v1 semantics, so that a test can derive the
reachability matrix from the rendered manifests and compare it with what we intend:

- A pod is isolated for ingress (egress) when at least one policy in its namespace
  selects it and lists Ingress (Egress) in its policyTypes; policyTypes defaults to
  Ingress, plus Egress when the policy has egress rules. A pod that no such policy
  selects accepts (sends) everything in that direction.
- An isolated pod accepts (sends) a connection when any rule of any selecting policy
  allows it: the rule's peers match the other end (no `from`/`to` means every peer) and
  its ports match the destination port (no `ports` means every port).
- A connection needs both: the source's egress and the destination's ingress.
- A peer is an ipBlock, or pods chosen by podSelector and/or namespaceSelector: both in
  one peer means pods matching podSelector in namespaces matching namespaceSelector;
  podSelector alone means the policy's own namespace.
- Named ports resolve against the destination pod's container ports; endPort makes a
  range; the protocol defaults to TCP.

Where the API leaves a choice to the implementation we take the one that finds more
reachability: ipBlock also matches pod addresses (Calico's behaviour), so a CIDR wide
enough to cover the pod network shows up in the matrix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Policy = Mapping[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace set) or an address outside the cluster (namespace None)."""

    name: str
    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    # Ports this endpoint listens on: (port, protocol) -> port name ("" when unnamed).
    ports: Mapping[tuple[int, str], str] = field(default_factory=dict)

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """LabelSelector semantics: matchLabels and matchExpressions all hold; {} selects all."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, operator, values = expr["key"], expr["operator"], expr.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in {"In", "NotIn", "Exists", "DoesNotExist"}:
            raise ValueError(f"unknown selector operator {operator!r}")
    return True


def policy_types(policy: Policy) -> set[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress", "Egress"} if "egress" in spec else {"Ingress"}


class Cluster:
    """The policies of a cluster and the labels of its namespaces."""

    def __init__(
        self, policies: Iterable[Policy], namespace_labels: Mapping[str, Mapping[str, str]]
    ) -> None:
        self.policies = [p for p in policies if p.get("kind") == "NetworkPolicy"]
        self.namespace_labels = namespace_labels

    def _selecting(self, pod: Endpoint, direction: str) -> list[Policy]:
        return [
            p
            for p in self.policies
            if p["metadata"].get("namespace", "default") == pod.namespace
            and selects(p["spec"].get("podSelector", {}), pod.labels)
            and direction in policy_types(p)
        ]

    def _peer_matches(self, peer: Mapping[str, Any], policy_ns: str, other: Endpoint) -> bool:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            address = ipaddress.ip_address(other.ip)
            if address not in ipaddress.ip_network(block["cidr"]):
                return False
            return not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
        if other.namespace is None:
            return False  # pod and namespace selectors never match addresses outside
        ns_selector = peer.get("namespaceSelector")
        if ns_selector is None:
            in_namespace = other.namespace == policy_ns
        else:
            in_namespace = selects(ns_selector, self.namespace_labels.get(other.namespace, {}))
        return in_namespace and selects(peer.get("podSelector"), other.labels)

    @staticmethod
    def _port_matches(
        rule_ports: list[Mapping[str, Any]] | None, dest: Endpoint, port: int, protocol: str
    ) -> bool:
        if not rule_ports:
            return True
        for entry in rule_ports:
            if entry.get("protocol", "TCP") != protocol:
                continue
            if "port" not in entry:
                return True
            value = entry["port"]
            if isinstance(value, str):
                # A named port means the destination pod's container port of that name.
                if dest.ports.get((port, protocol)) == value:
                    return True
                continue
            end = entry.get("endPort", value)
            if value <= port <= end:
                return True
        return False

    def _allows(
        self, pod: Endpoint, other: Endpoint, dest: Endpoint, port: int, protocol: str, way: str
    ) -> bool:
        """Does `pod`'s policy let it talk with `other` in direction `way` (Ingress/Egress)?"""
        selecting = self._selecting(pod, way)
        if not selecting:
            return True  # not isolated in this direction
        rules_key, peers_key = ("ingress", "from") if way == "Ingress" else ("egress", "to")
        for policy in selecting:
            policy_ns = policy["metadata"].get("namespace", "default")
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key)
                peer_ok = not peers or any(self._peer_matches(p, policy_ns, other) for p in peers)
                if peer_ok and self._port_matches(rule.get("ports"), dest, port, protocol):
                    return True
        return False

    def allowed(self, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """Can `src` open a connection to `dst` on this port? Both ends must agree."""
        egress = not src.is_pod or self._allows(src, dst, dst, port, protocol, "Egress")
        ingress = not dst.is_pod or self._allows(dst, src, dst, port, protocol, "Ingress")
        return egress and ingress


def matrix(
    cluster: Cluster, endpoints: Iterable[Endpoint], scope: str
) -> set[tuple[str, str, str]]:
    """Every (source, destination, "port/protocol") that is open, for pairs with at least
    one end in namespace `scope` (what the policies under test govern)."""
    everyone = list(endpoints)
    open_paths = set()
    for src in everyone:
        for dst in everyone:
            if src is dst or scope not in {src.namespace, dst.namespace}:
                continue
            for port, protocol in dst.ports:
                if cluster.allowed(src, dst, port, protocol):
                    open_paths.add((src.name, dst.name, f"{port}/{protocol}"))
    return open_paths
