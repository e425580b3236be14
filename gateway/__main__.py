"""``python -m gateway``: the same command line as ``scoregate``."""

from __future__ import annotations

import sys

from gateway.cli.main import main

sys.exit(main())
