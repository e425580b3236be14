"""SECURITY-CATALOG, Kubernetes: what every rendered overlay must be, checked on the
objects `kubectl kustomize` produces (not on the source files, which overlays change).

Schema validation is strict (unknown fields refused) against the Kubernetes versions
below. SecretProviderClass is a CRD of the Secrets Store CSI driver, outside the schemas
kubernetes-validate ships: it is the one kind allowed to lack a schema, and
`test_secret_provider_class_reads_the_tls_certificate_from_key_vault` checks its fields.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.k8s.conftest import K8S, NAMESPACE, Rendered

# The oldest minor we support (AKS keeps about a year of releases) and the newest the
# schemas cover.
K8S_VERSIONS = ("1.31", kubernetes_validate.latest_version())
CRD_KINDS = {"SecretProviderClass", "PodMonitor"}
REGISTRY = "scoregateacr.azurecr.io/"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MIN_UID = 10000  # checkov CKV_K8S_40: clear of the UIDs a node's own users take
DEPLOYMENTS = {
    "cpu": {"gateway", "scorer-cpu", "redis"},
    "gpu": {"gateway", "scorer-cpu", "scorer-gpu", "redis"},
    "production": {"gateway", "scorer-cpu", "scorer-gpu", "redis"},
}
# The rotation jobs, in every overlay (k8s/base/rotate-*.yaml).
CRONJOBS = {"rotate-api-key", "rotate-pull-token"}


def template(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment or a CronJob."""
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"])
    return dict(workload["spec"]["template"])


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template(workload)["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_workloads(overlay: Rendered) -> list[dict[str, Any]]:
    """Everything that makes pods: the Deployments and the CronJobs."""
    return [*overlay.workloads(), *overlay.of_kind("CronJob")]


def test_each_overlay_renders_the_expected_workloads(overlay: Rendered) -> None:
    assert {d["metadata"]["name"] for d in overlay.workloads()} == DEPLOYMENTS[overlay.overlay]
    assert {d["metadata"]["name"] for d in overlay.of_kind("CronJob")} == CRONJOBS
    kinds = {d["kind"] for d in overlay.docs}
    assert {
        "Namespace",
        "NetworkPolicy",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "SecretProviderClass",
        "PodMonitor",
        "CronJob",
        "Role",
        "RoleBinding",
    } == kinds
    # The Azure names file feeds replacements and is never applied.
    assert [
        c["metadata"]["name"].startswith("gateway-policies-") for c in overlay.of_kind("ConfigMap")
    ] == [True]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly_against_the_kubernetes_schemas(
    overlay: Rendered, version: str
) -> None:
    without_schema = set()
    for doc in overlay.docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            without_schema.add(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({version}): {exc.message}")
    assert without_schema == CRD_KINDS


def test_strict_validation_refuses_an_unknown_field(rendered: dict[str, Rendered]) -> None:
    """The validator is not a formality: a misspelled field fails it."""
    deployment = rendered["cpu"].get("Deployment", "gateway")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_namespace_enforces_the_restricted_pod_security_standard(overlay: Rendered) -> None:
    (namespace,) = overlay.of_kind("Namespace")
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    for doc in overlay.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


def test_pods_are_hardened(overlay: Rendered) -> None:
    """Non-root high UID, read-only root, no capabilities, no escalation, seccomp, no host
    namespaces, no automatic API token, no service links, requests and limits, probes
    (long-running pods), pull secret: Deployments and the CronJobs' pods alike."""
    for deployment in pod_workloads(overlay):
        name = deployment["metadata"]["name"]
        pod = template(deployment)["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] >= MIN_UID, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name
        assert not any(pod.get(h) for h in ("hostNetwork", "hostPID", "hostIPC")), name
        assert pod["imagePullSecrets"] == [{"name": "acr-pull"}], name
        assert not any("hostPath" in v for v in pod.get("volumes", [])), name
        for c in containers(deployment):
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= MIN_UID, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["privileged"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert c["imagePullPolicy"] == "Always", where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), where
        if deployment["kind"] == "Deployment":
            for c in pod["containers"]:
                assert {"livenessProbe", "readinessProbe"} <= set(c), name


def test_only_the_gateway_is_exposed_and_services_point_at_real_ports(overlay: Rendered) -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in overlay.workloads()}
    for service in overlay.of_kind("Service"):
        name, spec = service["metadata"]["name"], service["spec"]
        assert spec["type"] == ("LoadBalancer" if name == "gateway" else "ClusterIP"), name
        targets = [
            p
            for p in pods.values()
            if all(p["metadata"]["labels"].get(k) == v for k, v in spec["selector"].items())
        ]
        assert len(targets) == 1, f"service {name} selects {len(targets)} workloads"
        port_names = {p["name"] for c in targets[0]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in spec["ports"]} <= port_names, name
    gateway = overlay.get("Service", "gateway")
    # Local keeps client addresses for per-address limits and the audit trail.
    assert gateway["spec"]["externalTrafficPolicy"] == "Local"
    assert [(p["port"], p["targetPort"]) for p in gateway["spec"]["ports"]] == [(443, "https")]


def test_disruption_budgets_and_autoscalers_target_real_workloads(overlay: Rendered) -> None:
    workloads = {d["metadata"]["name"]: d for d in overlay.workloads()}
    for hpa in overlay.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in workloads
        assert hpa["spec"]["minReplicas"] >= 2  # each scorer and the gateway stay redundant
    budgets = {p["metadata"]["name"]: p for p in overlay.of_kind("PodDisruptionBudget")}
    # Redis is one replica of throw-away counters: a budget would only block node drains.
    assert set(budgets) == set(workloads) - {"redis"}
    for name, pdb in budgets.items():
        labels = workloads[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["minAvailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_images_come_from_the_registry_by_tag_in_development_by_digest_in_production(
    overlay: Rendered,
) -> None:
    for deployment in pod_workloads(overlay):
        skip = deployment["metadata"].get("annotations", {}).get("checkov.io/skip-image-digest")
        for c in containers(deployment):
            image = c["image"]
            assert image.startswith(REGISTRY), image
            if overlay.overlay == "production":
                assert DIGEST.search(image), image
            else:
                assert ":" in image.removeprefix(REGISTRY) and not image.endswith(":latest")
        # The digest check is waived only where images go by tag.
        assert (skip is None) == (overlay.overlay == "production")


def test_workload_identity_reaches_the_gateway_and_the_jobs_alone_and_redis_only_through_csi(
    overlay: Rendered,
) -> None:
    """The gateway's and each rotation job's processes get Azure tokens (the webhook's
    label), each job through a ServiceAccount of its own; Redis's ServiceAccount names an
    identity of its own that only the CSI driver uses (no label); scorers none."""
    accounts = {a["metadata"]["name"]: a for a in overlay.of_kind("ServiceAccount")}
    for account in accounts.values():
        assert account["automountServiceAccountToken"] is False
    identity_of = {
        "gateway": overlay.get("SecretProviderClass", "scoregate-gateway"),
        "redis": overlay.get("SecretProviderClass", "scoregate-redis"),
    }
    account_of_job = {
        "rotate-api-key": "scoregate-key-rotation",
        "rotate-pull-token": "scoregate-pull-token-rotation",
    }
    for workload in pod_workloads(overlay):
        name = workload["metadata"]["name"]
        pod = template(workload)
        account = accounts[pod["spec"]["serviceAccountName"]]
        annotation = (
            account["metadata"].get("annotations", {}).get("azure.workload.identity/client-id")
        )
        uses = pod["metadata"]["labels"].get("azure.workload.identity/use")
        assert uses == ("true" if name in {"gateway", *CRONJOBS} else None), name
        if name in identity_of:
            client_id = identity_of[name]["spec"]["parameters"]["clientID"]
            assert annotation == client_id and GUID.match(client_id), name
        elif name in account_of_job:
            assert account["metadata"]["name"] == account_of_job[name], name
            assert GUID.match(annotation), name
        else:
            assert annotation is None, name
    # One ServiceAccount per role: the scorers share theirs; nobody uses "default".
    assert set(accounts) == {
        "scoregate-gateway",
        "scoregate-scorer",
        "scoregate-redis",
        *account_of_job.values(),
    }


# SecretProviderClass -> the pod that mounts it, and the Key Vault objects it reads.
SECRET_FILES = {
    "scoregate-gateway": (
        "gateway",
        [
            {"objectName": "gateway-tls", "objectType": "secret", "objectAlias": "gateway.pem"},
            {"objectName": "redis-password", "objectType": "secret"},
        ],
    ),
    "scoregate-redis": ("redis", [{"objectName": "redis-password", "objectType": "secret"}]),
}


@pytest.mark.parametrize("name", sorted(SECRET_FILES))
def test_secret_provider_classes_read_key_vault_into_files_of_one_pod(
    overlay: Rendered, name: str
) -> None:
    deployment, expected_objects = SECRET_FILES[name]
    spc = overlay.get("SecretProviderClass", name)
    assert spc["apiVersion"] == "secrets-store.csi.x-k8s.io/v1"
    spec = spc["spec"]
    assert spec["provider"] == "azure"
    # Files only: secretObjects would copy the key into a Kubernetes Secret (etcd).
    assert set(spec) == {"provider", "parameters"}
    params = spec["parameters"]
    assert set(params) == {
        "usePodIdentity",
        "useVMManagedIdentity",
        "clientID",
        "keyvaultName",
        "tenantId",
        "objects",
    }
    assert params["usePodIdentity"] == "false" and params["useVMManagedIdentity"] == "false"
    assert GUID.match(params["clientID"]) and GUID.match(params["tenantId"])
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]", params["keyvaultName"])
    objects = [yaml.safe_load(o) for o in yaml.safe_load(params["objects"])["array"]]
    assert objects == expected_objects
    # One pod mounts it, read-only.
    for other in overlay.workloads():
        pod = other["spec"]["template"]["spec"]
        uses = [v for v in pod["volumes"] if "csi" in v]
        if other["metadata"]["name"] != deployment:
            assert all(v["csi"]["volumeAttributes"]["secretProviderClass"] != name for v in uses)
            continue
        (volume,) = uses
        assert volume["csi"] == {
            "driver": "secrets-store.csi.k8s.io",
            "readOnly": True,
            "volumeAttributes": {"secretProviderClass": name},
        }
        (c,) = pod["containers"]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        files = {f"{mount['mountPath']}/{o.get('objectAlias', o['objectName'])}" for o in objects}
        if deployment == "gateway":
            env = {e["name"]: e["value"] for e in c["env"]}
            pem = f"{mount['mountPath']}/gateway.pem"
            assert env["SCOREGATE_TLS_CERT"] == env["SCOREGATE_TLS_KEY"] == pem
            assert env["SCOREGATE_RATE_LIMIT_STORAGE_PASSWORD_FILE"] in files
            vault = f"https://{params['keyvaultName']}.vault.azure.net"
            assert env["SCOREGATE_KEYVAULT_URL"] == vault
        else:  # Redis's start script reads the password file (on stdin to redis-server)
            (script,) = c["args"]
            assert f"$(cat {files.pop()})" in script and not files


def test_the_pod_monitor_scrapes_each_metrics_port_as_azure_managed_prometheus_reads_it(
    overlay: Rendered,
) -> None:
    """A CRD, outside the schemas: checked field by field. Azure's add-on reads only its own
    API group, needs a named port, and drops series past the label limits its templates
    set; every pod with a metrics port is selected, no other."""
    (monitor,) = overlay.of_kind("PodMonitor")
    assert monitor["apiVersion"] == "azmonitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert (spec["labelLimit"], spec["labelNameLengthLimit"], spec["labelValueLengthLimit"]) == (
        63,
        511,
        1023,
    )
    (endpoint,) = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == (
        "metrics",
        "/metrics",
        "http",
    )
    (expression,) = spec["selector"]["matchExpressions"]
    assert expression["key"] == "app.kubernetes.io/component" and expression["operator"] == "In"
    with_metrics = set()
    for deployment in overlay.workloads():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selected = spec["selector"]["matchLabels"].items() <= labels.items() and (
            labels["app.kubernetes.io/component"] in expression["values"]
        )
        ports = [p.get("name") for c in containers(deployment) for p in c.get("ports", [])]
        assert selected == ("metrics" in ports), deployment["metadata"]["name"]
        if selected:
            with_metrics.add(deployment["metadata"]["name"])
    assert {"gateway", "scorer-cpu"} <= with_metrics


def test_no_secret_travels_in_the_manifests(overlay: Rendered) -> None:
    """Secrets come from Key Vault as mounted files: no Secret objects, no secret
    environment variables (the image-pull secret is made by create-pull-secret.sh)."""
    assert not overlay.of_kind("Secret")
    for deployment in pod_workloads(overlay):
        for c in containers(deployment):
            for env in c.get("env", []):
                # A resource field (the CPU limit, for thread pools) is no secret; a Secret,
                # a ConfigMap key or a field of the pod could carry one.
                assert set(env.get("valueFrom", {})) <= {"resourceFieldRef"}, env["name"]
            assert "envFrom" not in c


def test_the_gpu_scorer_alone_goes_to_the_gpu_pool(overlay: Rendered) -> None:
    for deployment in pod_workloads(overlay):
        pod = template(deployment)["spec"]
        tolerates_gpu = any(t.get("key") == "sku" for t in pod.get("tolerations", []))
        if deployment["metadata"]["name"] != "scorer-gpu":
            assert not tolerates_gpu and "nodeSelector" not in pod
            for c in containers(deployment):
                assert "nvidia.com/gpu" not in c["resources"]["limits"]
            continue
        assert pod["nodeSelector"] == {"kubernetes.azure.com/agentpool": "gpu"}
        assert pod["tolerations"] == [
            {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
        ]
        (scorer,) = pod["containers"]
        assert scorer["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert scorer["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert ("scorer-gpu" in {d["metadata"]["name"] for d in overlay.workloads()}) == (
        overlay.overlay in {"gpu", "production"}
    )


def test_production_is_the_gpu_overlay_with_digests(rendered: dict[str, Rendered]) -> None:
    """Production differs from the gpu overlay in its image references (digests, not
    tags) and the checkov waiver for tags, and in nothing else."""

    def comparable(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        docs = copy.deepcopy(docs)
        for doc in docs:
            annotations = doc["metadata"].get("annotations", {})
            annotations.pop("checkov.io/skip-image-digest", None)
            if "annotations" in doc["metadata"] and not annotations:
                del doc["metadata"]["annotations"]
            if doc["kind"] in {"Deployment", "CronJob"}:
                for c in containers(doc):
                    c["image"] = re.split(r"[:@]", c["image"].removeprefix(REGISTRY))[0]
        return docs

    assert comparable(rendered["gpu"].docs) == comparable(rendered["production"].docs)


def test_azure_names_from_one_file_reach_every_place(overlay: Rendered) -> None:
    """k8s/base/azure.env is the one place for Azure names: each placeholder in the base
    manifests is replaced, and the file itself is not applied."""
    values = dict(
        line.split("=", 1)
        for line in (K8S / "base" / "azure.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(values) == {
        "keyvaultName",
        "keyvaultUrl",
        "tenantId",
        "clientId",
        "redisClientId",
        "auditContainerUrl",
        "dnsLabel",
        "keyRotationClientId",
        "rotateKeyId",
        "rotateDeliverTo",
        "pullTokenClientId",
        "acrTokenId",
    }
    text = overlay.path.read_text()
    placeholders = (
        "CLIENT_ID",
        "TENANT_ID",
        "KEYVAULT_NAME",
        "KEYVAULT_URL",
        "DNS_LABEL",
        "ROTATE_KEY_ID",
        "ROTATE_DELIVER_TO",
        "ACR_TOKEN_ID",
    )
    for placeholder in placeholders:
        assert not re.search(rf"(?<![A-Z_]){placeholder}", text), placeholder
    assert "REDIS_CLIENT_ID" not in text and "AUDIT_CONTAINER_URL" not in text
    gateway = overlay.get("Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["SCOREGATE_AUDIT_SINK"] == values["auditContainerUrl"]
    for spc, client in (("scoregate-gateway", "clientId"), ("scoregate-redis", "redisClientId")):
        params = overlay.get("SecretProviderClass", spc)["spec"]["parameters"]
        assert (params["keyvaultName"], params["tenantId"], params["clientID"]) == (
            values["keyvaultName"],
            values["tenantId"],
            values[client],
        )
    service = overlay.get("Service", "gateway")["metadata"]["annotations"]
    assert service["service.beta.kubernetes.io/azure-dns-label-name"] == values["dnsLabel"]
    assert "local-config" not in text
    # The rotation jobs: their identities, and what they rotate.
    for account, client in (
        ("scoregate-key-rotation", "keyRotationClientId"),
        ("scoregate-pull-token-rotation", "pullTokenClientId"),
    ):
        annotations = overlay.get("ServiceAccount", account)["metadata"]["annotations"]
        assert annotations["azure.workload.identity/client-id"] == values[client]
    (rotate,) = containers(overlay.get("CronJob", "rotate-api-key"))
    assert rotate["args"][2] == values["rotateKeyId"]
    assert rotate["args"][6] == values["rotateDeliverTo"]
    env = {e["name"]: e.get("value") for e in rotate["env"]}
    assert env["SCOREGATE_KEYVAULT_URL"] == values["keyvaultUrl"]
    (rotate,) = containers(overlay.get("CronJob", "rotate-pull-token"))
    assert rotate["args"][3] == values["acrTokenId"]


# -- the rotation jobs ------------------------------------------------------------------------
def test_rotation_jobs_run_one_at_a_time_bounded_and_fail_fast_on_configuration_errors(
    overlay: Rendered,
) -> None:
    """A run never overlaps the previous one (two rotations would end each other's
    generation early), is bounded in time and retries, keeps a short history, and stops
    retrying on the exit codes that say a retry cannot help (`scoregate` documents them):
    only 3, a service that failed with nothing in use changed, is retried."""
    final_codes = {"rotate-api-key": [1, 2, 4], "rotate-pull-token": [1, 2]}
    for job in overlay.of_kind("CronJob"):
        name, spec = job["metadata"]["name"], job["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", name
        assert spec["timeZone"] == "Etc/UTC", name
        assert 0 < spec["startingDeadlineSeconds"] <= 3600, name
        assert spec["successfulJobsHistoryLimit"] == spec["failedJobsHistoryLimit"] == 3, name
        run = spec["jobTemplate"]["spec"]
        assert 0 < run["backoffLimit"] <= 6 and 0 < run["activeDeadlineSeconds"] <= 900, name
        (rule,) = run["podFailurePolicy"]["rules"]
        (container,) = run["template"]["spec"]["containers"]
        assert rule == {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": container["name"],
                "operator": "In",
                "values": final_codes[name],
            },
        }
        assert run["template"]["spec"]["restartPolicy"] == "Never", name
        image = re.split(r"[:@]", container["image"].rsplit("/", 1)[-1])[0]
        assert image == "gateway", name  # its ENTRYPOINT is `scoregate`
        # The job's pod is selected by the rotation egress policy and no ingress one.
        labels = run["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == name


def test_rotation_jobs_command_lines_are_what_scoregate_accepts(overlay: Rendered) -> None:
    """Each job's args, as rendered, parse with the real `scoregate` parser into the
    command and options the job is for: what the pod will run."""
    from gateway.cli.main import parser

    (rotate,) = containers(overlay.get("CronJob", "rotate-api-key"))
    args = parser().parse_args(rotate["args"])
    assert (args.command, args.keys_command, args.overlap, args.json) == (
        "keys",
        "rotate",
        "48h",
        True,
    )
    assert re.fullmatch(
        r"https://[a-z0-9-]+\.vault\.azure\.net/secrets/[A-Za-z0-9-]+", args.deliver_to
    )
    (rotate,) = containers(overlay.get("CronJob", "rotate-pull-token"))
    args = parser().parse_args(rotate["args"])
    assert (args.command, args.registry_command, args.secret, args.json) == (
        "registry",
        "rotate-pull-token",
        "acr-pull",
        True,
    )
    assert (args.lifetime, args.renew_before, args.arm_endpoint) == (
        "30d",
        "10d",
        "https://management.azure.com",
    )
    pod = template(overlay.get("CronJob", "rotate-pull-token"))["spec"]
    (kube_api,) = [m for m in rotate["volumeMounts"] if m["name"] == "kube-api"]
    assert str(args.service_account_dir) == kube_api["mountPath"]
    assert "kube-api" in {v["name"] for v in pod["volumes"]}
    # The token lives in the registry the images come from.
    registry = REGISTRY.split(".")[0]
    assert re.fullmatch(
        rf"/subscriptions/[0-9a-f-]{{36}}/resourceGroups/[\w.-]+/providers/"
        rf"Microsoft\.ContainerRegistry/registries/{registry}/tokens/[\w-]+",
        args.token_id,
    )


def test_only_the_pull_token_job_holds_a_kubernetes_token_and_only_for_one_secret(
    overlay: Rendered,
) -> None:
    """No pod gets an API token automatically; the pull-token job mounts a short-lived one
    at the standard in-cluster path, and its ServiceAccount may get and update the Secret
    acr-pull and nothing else (no create, list, watch, delete, no other object)."""
    with_token = {}
    for workload in pod_workloads(overlay):
        pod = template(workload)["spec"]
        assert pod["automountServiceAccountToken"] is False
        for volume in pod.get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                if "serviceAccountToken" in source:
                    with_token[workload["metadata"]["name"]] = (pod, volume, source)
    assert list(with_token) == ["rotate-pull-token"]
    pod, volume, source = with_token["rotate-pull-token"]
    token = source["serviceAccountToken"]
    assert token["path"] == "token" and 600 <= token["expirationSeconds"] <= 3600
    assert "audience" not in token  # the API server's own audience
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert mount["readOnly"] is True
    (role,) = overlay.of_kind("Role")
    assert role["metadata"]["name"] == "rotate-pull-token"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["acr-pull"],
            "verbs": ["get", "update"],
        }
    ]
    (binding,) = overlay.of_kind("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "rotate-pull-token",
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": pod["serviceAccountName"],
            "namespace": NAMESPACE,
        }
    ]
    args = container["args"]
    assert args[args.index("--secret") + 1] == role["rules"][0]["resourceNames"][0]
    assert "ClusterRole" not in {d["kind"] for d in overlay.docs}
