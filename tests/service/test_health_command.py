"""`rewind health` (the image's HEALTHCHECK, every 10 s) loads neither torch nor a service's server code."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import REPO

PROBE = """
import sys
from rewind_cli.main import main
code = main(["health", "--address", sys.argv[1]])
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.endswith((".server", ".servicer")))
print(code, heavy)
"""


def test_health_answers_serving_without_importing_torch(service):
    result = subprocess.run([sys.executable, "-c", PROBE, service.address], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == ["SERVING", "0 []"]
