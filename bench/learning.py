"""Learning benchmark: evaluation return through the trio on a CPU.

Each task trains with `rewind.train(local_services=True)` (a buffer and a
checkpoint service in subprocesses, the file:// store in a temporary folder)
and evaluates 10 episodes every `eval_freq` steps. Targets (issue 4):

  Pendulum-v1                              >= -200 within 8,000 environment steps
  cartpole-swingup (action repeat 8, DMC)  >= 600 within 48,000 environment steps (6,000 agent steps)

Writes bench/results/learning-<task>.json, its metrics.csv and the learning-curve PNG beside it.

    python -m bench.learning                       # Pendulum-v1
    python -m bench.learning --task cartpole-swingup --action-repeat 8 --steps 6000 --target 600
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import rewind
from rewind_trainer.plot import read_curves

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=8000, help="agent steps (environment steps / action repeat)")
    parser.add_argument("--action-repeat", type=int, default=1)
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval-freq", type=int, default=2000)
    parser.add_argument("--target", type=float, default=-200.0)
    parser.add_argument("--agent", action="append", default=[], metavar="KEY=VALUE",
                        help="agent hyperparameter override, e.g. num_samples=256")
    args = parser.parse_args(argv)
    agent = {k: json.loads(v) for k, _, v in (a.partition("=") for a in args.agent)}

    work = Path(tempfile.mkdtemp(prefix="rewind-learning-"))
    started = time.perf_counter()
    try:
        result = rewind.train(local_services=True, store=f"file://{work}/store", task=args.task, steps=args.steps,
                              action_repeat=args.action_repeat, model_size=args.model_size, seed=args.seed,
                              eval_freq=args.eval_freq, eval_episodes=10, eval_at_start=True,  # the untrained agent too
                              out_dir=str(work / "runs"), port=-1,
                              checkpoint_interval_episodes=0, agent=agent)
        minutes = (time.perf_counter() - started) / 60
        curves = read_curves(result.run_dir / "metrics.csv")
        RESULTS.mkdir(exist_ok=True)
        name = args.task.lower()
        shutil.copy(result.run_dir / "learning_curve.png", RESULTS / f"learning-{name}.png")
        shutil.copy(result.run_dir / "metrics.csv", RESULTS / f"learning-{name}.csv")
        steps, returns = curves.get("eval", ([], []))
        report = {
            "task": args.task, "model_size": args.model_size, "seed": args.seed, "action_repeat": args.action_repeat,
            "agent_steps": result.step, "env_steps": result.step * args.action_repeat,
            "final_eval_return": result.eval_return, "target": args.target, "met": result.eval_return >= args.target,
            "eval_curve": [{"step": s, "env_step": s * args.action_repeat, "return": r}
                           for s, r in zip(steps, returns, strict=True)],
            "wall_minutes": round(minutes, 1), "agent_overrides": agent,
        }
        (RESULTS / f"learning-{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
