"""Rollouts that drop nothing, read from the rendered manifests of every overlay.

- The gateway keeps serving while the Azure load balancer takes its node out: a preStop
  delay of at least the probe interval times the probes it takes (the Service states
  both), and a grace period longer than that delay, Hypercorn's graceful timeout and the
  audit drain together.
- A GPU Deployment rolls without a surge pod (a third GPU that a two-node pool lacks),
  and keeps one replica serving while the other restarts.
- Every scorer sizes its native thread pools (OpenMP for torch, OpenBLAS and MKL for
  NumPy and scikit-learn) to its CPU limit, not to the node's cores.
"""

from __future__ import annotations

from typing import Any

from gateway.server import GRACEFUL_TIMEOUT_S
from gateway.service import AUDIT_DRAIN_TIMEOUT_S
from tests.k8s.conftest import Rendered

# The Azure cloud provider's defaults, used when the Service does not say.
PROBE_INTERVAL = "service.beta.kubernetes.io/azure-load-balancer-health-probe-interval"
PROBE_COUNT = "service.beta.kubernetes.io/azure-load-balancer-health-probe-num-of-probe"
THREAD_POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_the_gateway_outlives_the_load_balancers_probes_and_drains_within_its_grace(
    overlay: Rendered,
) -> None:
    service = overlay.get("Service", "gateway")
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    annotations = service["metadata"].get("annotations", {})
    out_of_rotation_s = int(annotations.get(PROBE_INTERVAL, "5")) * int(
        annotations.get(PROBE_COUNT, "2")
    )
    spec = pod(overlay.get("Deployment", "gateway"))
    (gateway,) = [c for c in spec["containers"] if c["name"] == "gateway"]
    delay = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert delay >= out_of_rotation_s + 1
    stopping = delay + GRACEFUL_TIMEOUT_S + AUDIT_DRAIN_TIMEOUT_S
    assert spec["terminationGracePeriodSeconds"] > stopping


def test_a_gpu_deployment_rolls_without_a_surge_pod_and_keeps_one_replica(
    overlay: Rendered,
) -> None:
    gpu = [
        d
        for d in overlay.workloads()
        if any("nvidia.com/gpu" in c["resources"]["limits"] for c in pod(d)["containers"])
    ]
    assert len(gpu) == (1 if overlay.overlay in ("gpu", "production") else 0)
    for deployment in gpu:
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (0, 1)
        assert deployment["spec"]["replicas"] >= 2
        name = deployment["metadata"]["name"]
        (budget,) = [
            b for b in overlay.of_kind("PodDisruptionBudget") if b["metadata"]["name"] == name
        ]
        assert budget["spec"]["minAvailable"] == 1


def test_every_scorer_sizes_its_thread_pools_to_its_cpu_limit(overlay: Rendered) -> None:
    scorers = [d for d in overlay.workloads() if d["metadata"]["name"].startswith("scorer-")]
    assert scorers
    for deployment in scorers:
        (scorer,) = pod(deployment)["containers"]
        assert "cpu" in scorer["resources"]["limits"]
        env = {e["name"]: e for e in scorer["env"]}
        for name in THREAD_POOLS:
            assert env[name]["valueFrom"] == {"resourceFieldRef": {"resource": "limits.cpu"}}
