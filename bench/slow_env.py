"""SlowPendulum-v1: Pendulum whose every step waits a fixed time, as a simulator behind a network would.

A Gymnasium id with its module, so that any process makes it by name (Gymnasium imports the module):

    rewind collect --task bench.slow_env:SlowPendulum-v1 ...    # from the repository's root

Episodes are 50 steps (not Pendulum's 200), so that a collector's rate is counted in fine steps. The wait
is REWIND_BENCH_STEP_MS milliseconds (default 20).
"""

from __future__ import annotations

import os
import time

import gymnasium as gym
from gymnasium.envs.classic_control.pendulum import PendulumEnv

STEP_MS = float(os.environ.get("REWIND_BENCH_STEP_MS", "20"))
EPISODE_STEPS = 50


class SlowPendulum(PendulumEnv):
    def step(self, action):
        time.sleep(STEP_MS / 1000)  # the simulator's round trip: the collector waits, its CPU is free
        return super().step(action)


if "SlowPendulum-v1" not in gym.registry:
    gym.register(id="SlowPendulum-v1", entry_point=SlowPendulum, max_episode_steps=EPISODE_STEPS)
