"""A directory written the way Kubernetes writes a CSI secrets volume, and the dev CA's
certificates packed the way Key Vault hands them over.

kubelet's atomic writer (used by the Secrets Store CSI driver, Secrets and ConfigMaps):
the files go into a fresh ``..<timestamp>`` directory, a ``..data_tmp`` symlink to it is
renamed over ``..data`` in one step, each visible name is a symlink ``name ->
..data/name``, and the previous directory is removed. A reader never sees a mix of old
and new files, and the visible paths never change.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
from pathlib import Path

from certs.authority import CertPaths

_sequence = itertools.count()


class AtomicWriterVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, files: dict[str, bytes]) -> None:
        """Publish ``files`` as the volume's new content, atomically."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y_%m_%d_%H_%M_%S.%f")
        fresh = self.root / f"..{stamp}{next(_sequence)}"
        fresh.mkdir(mode=0o755)
        for name, data in files.items():
            (fresh / name).write_bytes(data)
            (fresh / name).chmod(0o644)
        data_link = self.root / "..data"
        previous = os.readlink(data_link) if data_link.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(fresh.name, tmp)
        os.rename(tmp, data_link)  # the one atomic step
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                os.symlink(f"..data/{name}", visible)
        if previous is not None:
            shutil.rmtree(self.root / previous)


def key_vault_pem(paths: CertPaths, name: str, *, key_of: str | None = None) -> bytes:
    """One PEM with the private key followed by the chain, as the CSI driver's Azure
    provider writes a Key Vault certificate read as a secret; ``key_of``: another
    certificate's key (a mismatched pair)."""
    return paths.key(key_of or name).read_bytes() + paths.cert(name).read_bytes()
