"""A rendered overlay's pods, started here as local processes, as AKS would start them.

Each pod runs its container's command and args as rendered (or, where the manifest leaves
them out, its image's ENTRYPOINT and CMD from the Dockerfile), with its environment and
its mounted ConfigMaps exactly as rendered, its init containers first. Only what a
cluster gives and this machine lacks is mapped, each in one place below:

- **names and ports**: each Service name (`scorer-cpu`, `redis.scoregate.svc…`) with its
  port becomes 127.0.0.1 and a free port; each containerPort becomes that pod's free
  port; a listener on `0.0.0.0` listens on 127.0.0.1 (the pod network is loopback here);
- **volumes**: each mountPath becomes a folder, made as the kubelet makes it: ConfigMap
  files root-owned with the volume's defaultMode, emptyDirs root-owned with the fsGroup's
  group and mode 2777, a CSI volume holding the files its SecretProviderClass names;
- **Azure**: the Key Vault URL and login.microsoftonline.com become the project's
  stand-ins, and the pod gets what AKS would give it for them (a token endpoint, in place
  of the workload identity webhook's variables, and the CA that signs the stand-ins);
- **images**: programs come from each image's replayed install (tests/k8s/installs.py),
  run by an interpreter UID 10001 may execute; the Redis image's shell is busybox's;
- **the Kubernetes API** (where a stand-in is given): `KUBERNETES_SERVICE_HOST`/`_PORT`
  name it, as the kubelet sets them in every container, and a projected volume holds what
  the kubelet projects: a token for the pod's ServiceAccount, the cluster CA
  (`kube-root-ca.crt`) and the namespace.

A CronJob runs once on demand (`run_job`): its jobTemplate's pod, made and run as the
Deployments' are, to completion.

Run as root (CI), every process runs under its pod's security context: setpriv to
runAsUser/runAsGroup with the fsGroup, no capabilities, no new privileges, in a working
folder it cannot write (its root filesystem is read-only on AKS).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.k8s.conftest import K8S, NAMESPACE, Rendered
from tests.k8s.installs import Install
from tests.k8s.test_images import instructions

IMAGES = K8S / "images"
POD_UID = POD_GID = FS_GROUP = 10001
# The images' interpreter is their own /usr/local/bin/python; here, an interpreter the pod
# user may run (this machine's own Python lives under /root, closed to UID 10001).
POD_PYTHON = Path("/usr/bin/python3")
AS_ROOT = os.geteuid() == 0


def as_pod_user(args: list[str], uid: int = POD_UID, gid: int = POD_GID) -> list[str]:
    """The pod's security context: its UID/GID, the fsGroup as a supplementary group, no
    capabilities at all (`capabilities.drop: [ALL]`, no privilege escalation)."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        f"--groups={FS_GROUP}",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        *args,
    ]


def world_readable_tmp() -> Path:
    """A scratch folder UID 10001 can reach (pytest's own is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="scoregate-pod-"))
    folder.chmod(0o755)
    return folder


def models_image(repository: Path, into: Path) -> Path:
    """/opt/models as models.Dockerfile lays it out: owned by root, files 0444, dirs 0555."""
    source = into / "opt-models"
    shutil.copytree(repository, source)
    for path in sorted(source.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    source.chmod(0o555)
    return source


def empty_dir_volume(into: Path, name: str = "models-volume") -> Path:
    """An emptyDir as the kubelet makes it for a pod with an fsGroup: root-owned, the
    fsGroup's group, mode 2777."""
    volume = into / name
    volume.mkdir()
    if AS_ROOT:
        os.chown(volume, 0, FS_GROUP)
    volume.chmod(0o2777)
    return volume


def init_container_command(rendered: Rendered, deployment: str, source: Path) -> list[str]:
    """The models init container's command as the rendered Deployment runs it: the image's
    ENTRYPOINT (models.Dockerfile) and the container's args, with the image's folder and
    the volume's mount path mapped to this machine's."""
    pod = rendered.get("Deployment", deployment)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (entry,) = [a for w, a in instructions(IMAGES / "models.Dockerfile") if w == "ENTRYPOINT"]
    command = [*json.loads(entry), *init["args"]]
    (mount,) = init["volumeMounts"]
    assert pod["securityContext"]["fsGroup"] == FS_GROUP
    assert init["securityContext"]["runAsUser"] == POD_UID
    if command[0] == "python":
        command[0] = str(POD_PYTHON)
    return [
        part.replace("/opt/models", str(source)).replace(mount["mountPath"], "{volume}")
        for part in command
    ]


# -- the cluster ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ("4", "500m") in cores."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def kubelet_environment(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet sets it: literal values, and resource
    fields (`limits.cpu` in whole cores, rounded up, as with the default divisor 1)."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and ref.get("divisor", "1") == "1", ref
        env[e["name"]] = str(math.ceil(cpu_cores(container["resources"]["limits"]["cpu"])))
    return env


def image_name(reference: str) -> str:
    """`scoregateacr.azurecr.io/scoregate/gateway@sha256:…` -> `gateway`."""
    return re.split(r"[:@]", reference.rsplit("/", 1)[-1])[0]


def dockerfile_of(image: str) -> Path | None:
    if image.startswith("models-"):
        return IMAGES / "models.Dockerfile"
    path = IMAGES / f"{image}.Dockerfile"
    return path if path.exists() else None


def image_command(container: Mapping[str, Any]) -> list[str]:
    """command/args as Kubernetes combines them with the image's ENTRYPOINT/CMD: `command`
    replaces the ENTRYPOINT (and drops CMD), `args` replaces CMD."""
    image = image_name(container["image"])
    dockerfile = dockerfile_of(image)
    entry: list[str] = []
    cmd: list[str] = []
    if dockerfile is not None:
        for word, text in instructions(dockerfile):
            if word == "ENTRYPOINT":
                entry = json.loads(text)
            elif word == "CMD" and text.startswith("["):
                cmd = json.loads(text)
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    assert dockerfile is not None, f"{image}: no Dockerfile here, so the manifest needs command"
    return [*entry, *container.get("args", cmd)]


@dataclass
class AzureStandIns:
    """Where Azure's endpoints are here, and what a pod gets to use them."""

    ca: Path  # the CA that signs the stand-ins' certificates and the gateway's (CSI)
    replacements: dict[str, str]  # Azure URL -> stand-in URL
    gateway_env: dict[str, str]  # what AKS (workload identity, public CAs) would provide
    csi_files: dict[str, bytes]  # Key Vault object name -> its content, as the CSI driver writes


@dataclass
class KubernetesStandIn:
    """The API server here, and what the kubelet gives a pod to reach it."""

    port: int
    ca: Path  # the cluster CA, as the kube-root-ca.crt ConfigMap holds it
    token: Callable[[str, str], str]  # (namespace, ServiceAccount) -> a token for it


@dataclass
class Pod:
    name: str  # the Deployment's
    spec: dict[str, Any]
    ports: dict[int, int]  # containerPort -> local port
    folder: Path
    volumes: dict[str, Path] = field(default_factory=dict)  # mountPath -> folder here
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / "pod.log"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def port(self, name: str) -> int:
        """The local port of the container port with this name."""
        for c in self.spec["containers"]:
            for p in c.get("ports", []):
                if p.get("name") == name:
                    return self.ports[p["containerPort"]]
        raise KeyError(name)


class LocalCluster:
    """One overlay's Deployments as processes on this machine (one pod each)."""

    def __init__(
        self,
        overlay: Rendered,
        root: Path,
        installs: Mapping[str, Install],
        azure: AzureStandIns,
        images: Mapping[str, Path],  # models image name -> its /opt/models here
        edit_config: Callable[[str, str], str] = lambda name, text: text,
        kubernetes: KubernetesStandIn | None = None,
    ) -> None:
        self.overlay = overlay
        self.kubernetes = kubernetes
        self.root = root
        self.installs = installs
        self.azure = azure
        self.images = images
        self.edit_config = edit_config
        self.pods: dict[str, Pod] = {}
        for deployment in overlay.workloads():
            spec = deployment["spec"]["template"]["spec"]
            ports = {
                p["containerPort"]: free_port()
                for c in spec["containers"]
                for p in c.get("ports", [])
            }
            name = deployment["metadata"]["name"]
            folder = root / name
            folder.mkdir()
            self.pods[name] = Pod(name, spec, ports, folder)
        self.services = self._services()

    # -- what a cluster gives, mapped ---------------------------------------------------
    def _services(self) -> dict[tuple[str, int], int]:
        """(Service name, port) -> the local port of the pod behind it."""
        found = {}
        for service in self.overlay.of_kind("Service"):
            selector = service["spec"]["selector"]
            (pod,) = [
                self.pods[d["metadata"]["name"]]
                for d in self.overlay.workloads()
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            for p in service["spec"]["ports"]:
                target = p["targetPort"]
                if isinstance(target, str):
                    (target,) = [
                        cp["containerPort"]
                        for c in pod.spec["containers"]
                        for cp in c.get("ports", [])
                        if cp.get("name") == target
                    ]
                found[(service["metadata"]["name"], p["port"])] = pod.ports[target]
        return found

    def localize(self, text: str) -> str:
        """Service DNS names and Azure endpoints in a config file, a value or a script."""
        for (service, port), local in self.services.items():
            name = rf"{re.escape(service)}(?:\.{NAMESPACE}(?:\.svc(?:\.cluster\.local)?)?)?"
            text = re.sub(rf"(?<![\w.-]){name}:{port}\b", f"127.0.0.1:{local}", text)
        for azure, here in self.azure.replacements.items():
            text = text.replace(azure, here)
        return text

    def _pod_paths(self, pod: Pod, text: str) -> str:
        """Mount paths and container ports of this pod, in a value or a script (one pass
        each, so a folder made here is never mapped again)."""
        if pod.volumes:
            mounts = "|".join(re.escape(m) for m in sorted(pod.volumes, key=len, reverse=True))
            text = re.sub(
                rf"(?<![\w./-])({mounts})(?=/|\b|$)",
                lambda m: str(pod.volumes[m.group(1)]),
                text,
            )
        if pod.ports:
            ports = "|".join(str(p) for p in pod.ports)
            text = re.sub(
                rf"(?<![\w.:/-])({ports})(?![\w.])", lambda m: str(pod.ports[int(m.group(1))]), text
            )
        return text

    # -- volumes ----------------------------------------------------------------------
    def _make_volumes(self, pod: Pod) -> dict[str, Path]:
        """Volume name -> its folder here, made as the kubelet makes it."""
        made = {}
        configmaps = {c["metadata"]["name"]: c for c in self.overlay.of_kind("ConfigMap")}
        for volume in pod.spec.get("volumes", []):
            folder = pod.folder / "volumes" / volume["name"]
            folder.parent.mkdir(exist_ok=True)
            if "emptyDir" in volume:
                folder = empty_dir_volume(folder.parent, volume["name"])
            elif "configMap" in volume:
                folder.mkdir()
                data = configmaps[volume["configMap"]["name"]]["data"]
                for key, text in data.items():
                    path = folder / key
                    path.write_text(self.localize(self.edit_config(key, text)))
                    path.chmod(volume["configMap"].get("defaultMode", 0o644))
                folder.chmod(0o755)
            elif "csi" in volume:
                folder.mkdir()
                spc_name = volume["csi"]["volumeAttributes"]["secretProviderClass"]
                spc = self.overlay.get("SecretProviderClass", spc_name)
                array = yaml.safe_load(spc["spec"]["parameters"]["objects"])["array"]
                for entry in (yaml.safe_load(o) for o in array):
                    path = folder / entry.get("objectAlias", entry["objectName"])
                    path.write_bytes(self.azure.csi_files[entry["objectName"]])
                    path.chmod(0o644)  # the driver's default filePermission
                folder.chmod(0o755)
            elif "projected" in volume:
                self._project(pod, volume["projected"], folder)
            else:
                raise AssertionError(f"{pod.name}: a volume this test cannot make: {volume}")
            made[volume["name"]] = folder
        return made

    def _project(self, pod: Pod, projected: Mapping[str, Any], folder: Path) -> None:
        """A projected volume as the kubelet fills it: a ServiceAccount token, the cluster
        CA from kube-root-ca.crt, the namespace from the Downward API."""
        assert self.kubernetes is not None, f"{pod.name} projects API credentials: no API here"
        folder.mkdir()
        files: dict[str, str | bytes] = {}
        for source in projected["sources"]:
            if "serviceAccountToken" in source:
                account = pod.spec.get("serviceAccountName", "default")
                files[source["serviceAccountToken"]["path"]] = self.kubernetes.token(
                    NAMESPACE, account
                )
            elif source.get("configMap", {}).get("name") == "kube-root-ca.crt":
                for item in source["configMap"]["items"]:
                    assert item["key"] == "ca.crt", item
                    files[item["path"]] = self.kubernetes.ca.read_bytes()
            elif "downwardAPI" in source:
                for item in source["downwardAPI"]["items"]:
                    assert item["fieldRef"]["fieldPath"] == "metadata.namespace", item
                    files[item["path"]] = NAMESPACE
            else:
                raise AssertionError(f"{pod.name}: a projection this test cannot make: {source}")
        for name, content in files.items():
            path = folder / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            path.chmod(projected.get("defaultMode", 0o644))
        folder.chmod(0o755)

    # -- processes --------------------------------------------------------------------
    def _program(self, pod: Pod, image: str, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        """The image's programs, as this machine can run them."""
        env: dict[str, str] = {}
        install = self.installs.get(image)
        if install is not None:
            (site,) = install.bin.parent.glob("lib/python3*/site-packages")
            env["PYTHONPATH"] = str(site)
            if argv[0] == "python":
                return [str(POD_PYTHON), *argv[1:]], env
            script = install.bin / argv[0]
            assert script.exists(), f"{image} has no program {argv[0]}"
            return [str(POD_PYTHON), str(script), *argv[1:]], env
        if image.startswith("models-"):
            return [part.replace("/opt/models", str(self.images[image])) for part in argv], env
        if image == "redis" and argv[0] == "sh":
            return ["busybox", *argv], env  # the alpine image's /bin/sh
        if image == "redis" and argv[0] in ("redis-server", "redis-cli"):
            return argv, env  # this machine's Redis (Debian's), on PATH
        raise AssertionError(f"{pod.name}: no way to run {argv[0]!r} of image {image!r}")

    def _process(
        self, pod: Pod, container: Mapping[str, Any]
    ) -> tuple[list[str], dict[str, str], Path]:
        image = image_name(container["image"])
        argv = [self._pod_paths(pod, self.localize(part)) for part in image_command(container)]
        argv, env = self._program(pod, image, argv)
        rendered = kubelet_environment(container)
        for name, value in rendered.items():
            value = self._pod_paths(pod, self.localize(value))
            env[name] = "127.0.0.1" if value == "0.0.0.0" else value  # noqa: S104
        # The working folder: the image's WORKDIR is read-only on AKS, and unwritable here.
        cwd = pod.folder / "cwd"
        cwd.mkdir(exist_ok=True)
        cwd.chmod(0o555)
        env.setdefault("HOME", str(cwd))
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        if "/tmp" in pod.volumes:  # noqa: S108 - the pod's /tmp is an emptyDir
            env["TMPDIR"] = str(pod.volumes["/tmp"])  # noqa: S108
        if image == "gateway":
            env.update(self.azure.gateway_env)
        if self.kubernetes is not None:  # the kubelet sets these in every container
            env["KUBERNETES_SERVICE_HOST"] = "127.0.0.1"
            env["KUBERNETES_SERVICE_PORT"] = str(self.kubernetes.port)
        if AS_ROOT:
            context = {**pod.spec.get("securityContext", {}), **container["securityContext"]}
            argv = as_pod_user(argv, context["runAsUser"], context["runAsGroup"])
        return argv, env, cwd

    def _prepare(self, pod: Pod) -> None:
        by_name = self._make_volumes(pod)
        for container in [*pod.spec.get("initContainers", []), *pod.spec["containers"]]:
            for mount in container.get("volumeMounts", []):
                pod.volumes[mount["mountPath"]] = by_name[mount["name"]]

    def run_init_containers(self, pod: Pod) -> list[subprocess.CompletedProcess[bytes]]:
        results = []
        for container in pod.spec.get("initContainers", []):
            argv, env, cwd = self._process(pod, container)
            result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=120)
            assert result.returncode == 0, (pod.name, container["name"], result.stderr[-2000:])
            results.append(result)
        return results

    def start(self) -> None:
        for pod in self.pods.values():
            self._prepare(pod)
        # Redis and the scorers before the gateway, as their readiness gates the traffic.
        order = sorted(self.pods.values(), key=lambda p: p.name == "gateway")
        for pod in order:
            self.run_init_containers(pod)
            (container,) = pod.spec["containers"]
            argv, env, cwd = self._process(pod, container)
            with pod.log.open("wb") as log:
                pod.proc = subprocess.Popen(
                    argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
                )

    def run_job(self, cronjob: str) -> subprocess.CompletedProcess[bytes]:
        """One run of a CronJob, as the Job it makes runs its pod: the jobTemplate's pod
        spec, volumes made as the kubelet makes them, init containers, then its container
        to completion within the Job's activeDeadlineSeconds."""
        job = self.overlay.get("CronJob", cronjob)["spec"]["jobTemplate"]["spec"]
        spec = job["template"]["spec"]
        assert spec["restartPolicy"] == "Never", cronjob
        runs = len(list(self.root.glob(f"job-{cronjob}-*")))
        folder = self.root / f"job-{cronjob}-{runs}"
        folder.mkdir()
        pod = Pod(cronjob, spec, {}, folder)
        self._prepare(pod)
        self.run_init_containers(pod)
        (container,) = spec["containers"]
        argv, env, cwd = self._process(pod, container)
        return subprocess.run(
            argv, env=env, cwd=cwd, capture_output=True, timeout=job["activeDeadlineSeconds"]
        )

    def probe(self, pod: Pod, probe: Mapping[str, Any]) -> bool:
        """One run of a rendered probe, as the kubelet runs it."""
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = get["port"]
            local = pod.port(port) if isinstance(port, str) else pod.ports[port]
            scheme = get.get("scheme", "HTTP").lower()
            # The kubelet does not verify a probe's certificate; here it is verified all the
            # same, against the CA that signed the one the CSI volume holds.
            verify = ssl.create_default_context(cafile=str(self.azure.ca))
            try:
                r = httpx.get(
                    f"{scheme}://127.0.0.1:{local}{get['path']}", verify=verify, timeout=3
                )
            except httpx.TransportError:
                return False
            return 200 <= r.status_code < 400
        if "tcpSocket" in probe:
            port = probe["tcpSocket"]["port"]
            local = pod.port(port) if isinstance(port, str) else pod.ports[port]
            try:
                socket.create_connection(("127.0.0.1", local), timeout=3).close()
            except OSError:
                return False
            return True
        (container,) = pod.spec["containers"]
        argv = [self._pod_paths(pod, part) for part in probe["exec"]["command"]]
        exec_container = {**container, "command": argv, "args": []}
        argv, env, cwd = self._process(pod, exec_container)
        return (
            subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=10).returncode == 0
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Every pod's readinessProbe passes (its startupProbe first, where it has one)."""
        deadline = time.monotonic() + timeout_s
        for pod in self.pods.values():
            (container,) = pod.spec["containers"]
            for kind in ("startupProbe", "readinessProbe"):
                if kind not in container:
                    continue
                while not self.probe(pod, container[kind]):
                    assert pod.proc is not None and pod.proc.poll() is None, (
                        f"{pod.name} exited ({pod.proc and pod.proc.returncode}):\n{pod.log_tail()}"
                    )
                    assert time.monotonic() < deadline, (
                        f"{pod.name}: {kind} fails\n{pod.log_tail()}"
                    )
                    time.sleep(0.3)

    def stop_pod(self, name: str, timeout_s: float = 60.0) -> int:
        """SIGTERM, as the kubelet stops a container (after its preStop hook), and wait."""
        proc = self.pods[name].proc
        assert proc is not None
        proc.terminate()
        return proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        for pod in self.pods.values():
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.terminate()
        for pod in self.pods.values():
            if pod.proc is None:
                continue
            try:
                pod.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pod.proc.kill()
                pod.proc.wait()
