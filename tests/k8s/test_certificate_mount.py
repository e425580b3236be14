"""The gateway's TLS file can rotate in place (issue 18): the rendered gateway reads its
certificate and key through the Secrets Store CSI volume, mounted whole.

kubelet updates a projected or CSI volume by flipping its ``..data`` link; a file mounted
with ``subPath`` is bound to the inode it had at start and never sees an update, so the
gateway would keep serving the old certificate until it expired
(tests/e2e/test_certificate_rotation.py swaps the file under a live gateway).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from tests.k8s.conftest import Rendered


def test_the_gateway_reads_its_certificate_from_the_csi_volume_mounted_whole(
    overlay: Rendered,
) -> None:
    gateway = overlay.get("Deployment", "gateway")
    pod = gateway["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    csi_volumes = {v["name"] for v in pod["volumes"] if "csi" in v}
    for setting in ("SCOREGATE_TLS_CERT", "SCOREGATE_TLS_KEY"):
        path = PurePosixPath(env[setting])
        mounts = [m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"])]
        assert len(mounts) == 1, f"{setting}={path}: {len(mounts)} mounts hold it"
        (mount,) = mounts
        assert mount["name"] in csi_volumes, f"{setting} is not on the CSI volume"
        assert "subPath" not in mount and "subPathExpr" not in mount
        assert mount["readOnly"] is True
    # The reload interval, if set, is a number of seconds no longer than the driver's
    # default rotation poll (2 minutes): a renewed file is served within both.
    interval = float(env.get("SCOREGATE_TLS_RELOAD_INTERVAL_S") or 30)
    assert 0 < interval <= 120
    # No mount of any container takes a single file out of a secrets volume.
    for c in pod.get("initContainers", []) + pod["containers"]:
        for m in c.get("volumeMounts", []):
            assert not (m["name"] in csi_volumes and "subPath" in m), (c["name"], m)
