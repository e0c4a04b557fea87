"""`rewind health` wall time: the image's HEALTHCHECK runs it every 10 s, so it must answer well under a second.

One run, side by side in interleaved rounds against a running buffer service
(`rewind buffer serve` in a subprocess): the `rewind health` command as the
image runs it, `python -c "import grpc"` (the gRPC library's own import, which
any gRPC health probe in Python pays) and `python -c pass` (the interpreter's
start-up).

    python -m bench.health [--rounds 20]

Target: median under 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rewind_runtime.local import LocalService

RESULTS = Path(__file__).resolve().parent / "results"


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    args = parser.parse_args()
    rewind = shutil.which("rewind") or str(Path(sys.executable).with_name("rewind"))
    with LocalService(["buffer", "serve"]) as service:
        commands = {"rewind health": [rewind, "health", "--address", service.address],
                    "import grpc": [sys.executable, "-c", "import grpc"],
                    "python -c pass": [sys.executable, "-c", "pass"]}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(timed(command))
        service.terminate()
    report = {name: {"median_s": statistics.median(t), "p90_s": sorted(t)[int(0.9 * (len(t) - 1))],
                     "max_s": max(t)} for name, t in times.items()}
    report["rounds"] = args.rounds
    report["target_median_s"] = 0.3
    for name in commands:
        r = report[name]
        print(f"{name:<16} median {r['median_s']:.3f} s   p90 {r['p90_s']:.3f} s   max {r['max_s']:.3f} s")
    met = report["rewind health"]["median_s"] < 0.3
    print(f"target: median < 0.3 s: {'met' if met else 'NOT met'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "health.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
