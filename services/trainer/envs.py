"""Environments with TD-MPC2's interface: actions in [-1, 1], float32 tensors,
action repeat, and a state that can be saved and restored exactly.

    env = make_env("Pendulum-v1", seed=1)
    obs = env.reset()
    obs, reward, terminated, truncated = env.step(torch.zeros(env.action_dim))
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch

from rewind.errors import InvalidArgument


class BoxActions:
    """Actions in [-1, 1], mapped onto the task's own bounds `_low`..`_high`."""

    action_dim: int
    _low: np.ndarray
    _high: np.ndarray

    def _scale(self, action: torch.Tensor) -> np.ndarray:
        a = action.detach().cpu().double().numpy().clip(-1, 1)
        return self._low + (a + 1) * 0.5 * (self._high - self._low)

    def random_action(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.action_dim, generator=generator) * 2 - 1


# Gymnasium tasks that never terminate early.
FIXED_LENGTH_TASKS = frozenset({"Pendulum-v1"})


class GymEnv(BoxActions):
    """A Gymnasium task with a Box action space, rescaled to [-1, 1].

    Args:
        task: a Gymnasium id such as "Pendulum-v1".
        seed: seeds the first reset; later resets continue the env's own generator.
        action_repeat: environment steps per agent step (rewards are summed).
    """

    def __init__(self, task: str, seed: int, action_repeat: int = 1) -> None:
        import gymnasium as gym

        try:
            self.env = gym.make(task)
        except gym.error.Error as exc:
            raise InvalidArgument(f"task: {task!r} is not a known Gymnasium environment ({exc})") from None
        space = self.env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise InvalidArgument(f"task: {task!r} needs a flat continuous action space, has {space}")
        if len(self.env.observation_space.shape or ()) != 1:
            raise InvalidArgument(f"task: {task!r} needs flat observations, has {self.env.observation_space}")
        self.task = task
        self.action_repeat = action_repeat
        self.obs_dim = int(self.env.observation_space.shape[0])
        self.action_dim = int(space.shape[0])
        self._low, self._high = space.low.astype(np.float64), space.high.astype(np.float64)
        limit = self.env.spec.max_episode_steps if self.env.spec else None
        self.episode_length = (limit or 1000) // action_repeat
        self._seed: int | None = seed
        # Episodes that only ever end by the time limit; the loop may then sample ahead to the episode's end.
        self.fixed_length = task in FIXED_LENGTH_TASKS

    def close(self) -> None:
        self.env.close()

    def reset(self) -> torch.Tensor:
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None  # seed once; the env's generator carries on from there
        return torch.as_tensor(obs, dtype=torch.float32)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, float, bool, bool]:
        scaled = self._scale(action)
        total = 0.0
        for _ in range(self.action_repeat):
            obs, reward, terminated, truncated, _ = self.env.step(scaled.astype(np.float32))
            total += float(reward)
            if terminated or truncated:
                break
        return torch.as_tensor(obs, dtype=torch.float32), total, bool(terminated), bool(truncated)

    def get_state(self) -> dict[str, Any]:
        """The env's generator, physical state and step count (JSON-friendly)."""
        unwrapped = self.env.unwrapped
        return {
            "np_random": unwrapped.np_random.bit_generator.state,
            "state": np.asarray(unwrapped.state).tolist() if getattr(unwrapped, "state", None) is not None
            else None,
            "elapsed_steps": getattr(self.env, "_elapsed_steps", None),
            "seed_pending": self._seed,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        unwrapped = self.env.unwrapped
        if state.get("state") is not None or state.get("elapsed_steps") is not None:
            self.env.reset()  # wrappers insist on a reset before stepping
        unwrapped.np_random.bit_generator.state = state["np_random"]
        if state.get("state") is not None:
            unwrapped.state = np.asarray(state["state"], dtype=np.asarray(unwrapped.state).dtype)
        if state.get("elapsed_steps") is not None:
            _set_elapsed(self.env, state["elapsed_steps"])
        self._seed = state.get("seed_pending")


def _set_elapsed(env, steps: int) -> None:
    """Set the TimeLimit wrapper's step count, wherever it sits in the wrapper stack."""
    while env is not None:
        if hasattr(env, "_elapsed_steps"):
            env._elapsed_steps = steps
            return
        env = getattr(env, "env", None)


class DMCEnv(BoxActions):
    """A DeepMind Control task ("cartpole-swingup"), observations flattened, 1000 steps per episode.

    Needs the `dmc` extra: pip install 'rewind[dmc]'.
    """

    fixed_length = True

    def __init__(self, task: str, seed: int, action_repeat: int = 1) -> None:
        os.environ.setdefault("MUJOCO_GL", "disable")  # no rendering: no display needed
        try:
            from dm_control import suite
        except ImportError:
            raise InvalidArgument(f"task: {task!r} is a DeepMind Control task; install them with "
                                  "pip install 'rewind[dmc]'") from None
        domain, _, name = task.partition("-")
        domain = DMC_DOMAINS.get(domain, domain)
        if (domain, name.replace("-", "_")) not in suite.ALL_TASKS:
            raise InvalidArgument(f"task: {task!r} is not a DeepMind Control task (e.g. cartpole-swingup, "
                                  "walker-walk)")
        self.env = suite.load(domain, name.replace("-", "_"), task_kwargs={"random": seed})
        spec = self.env.action_spec()
        self.task = task
        self.action_repeat = action_repeat
        self.obs_dim = int(sum(np.prod(s.shape) for s in self.env.observation_spec().values()))
        self.action_dim = int(spec.shape[0])
        self._low, self._high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.episode_length = int(self.env._step_limit) // action_repeat

    def close(self) -> None:
        self.env.close()

    @staticmethod
    def _obs(time_step) -> torch.Tensor:
        return torch.as_tensor(np.concatenate([np.asarray(v, dtype=np.float64).ravel()
                                               for v in time_step.observation.values()]), dtype=torch.float32)

    def reset(self) -> torch.Tensor:
        return self._obs(self.env.reset())

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, float, bool, bool]:
        scaled = self._scale(action)
        total = 0.0
        for _ in range(self.action_repeat):
            time_step = self.env.step(scaled)
            total += float(time_step.reward or 0.0)
            if time_step.last():
                break
        # DMC episodes end only by the time limit: truncation, never termination.
        return self._obs(time_step), total, False, bool(time_step.last())

    def get_state(self) -> dict[str, Any]:
        """The full integration state (warm starts included), the task's generator and step count."""
        import mujoco

        physics = self.env.physics
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(physics.model.ptr, spec))
        mujoco.mj_getState(physics.model.ptr, physics.data.ptr, state, spec)
        kind, keys, pos, has_gauss, cached = self.env.task.random.get_state()
        return {"physics": state.tolist(), "random": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                "step_count": self.env._step_count, "reset_next_step": self.env._reset_next_step}

    def set_state(self, state: dict[str, Any]) -> None:
        import mujoco

        physics = self.env.physics
        mujoco.mj_setState(physics.model.ptr, physics.data.ptr, np.asarray(state["physics"]),
                           mujoco.mjtState.mjSTATE_INTEGRATION)
        kind, keys, pos, has_gauss, cached = state["random"]
        self.env.task.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        self.env._step_count = state["step_count"]
        self.env._reset_next_step = state["reset_next_step"]
        mujoco.mj_forward(physics.model.ptr, physics.data.ptr)


# TD-MPC2's short names for DMC domains.
DMC_DOMAINS = {"cup": "ball_in_cup", "pointmass": "point_mass"}

Env = GymEnv | DMCEnv


def make_env(task: str, seed: int, action_repeat: int = 1) -> Env:
    """The environment for a task name: a Gymnasium id ("Pendulum-v1") or a DMC task ("cartpole-swingup").

    Raises:
        InvalidArgument: an unknown task, or one without flat observations and continuous actions.
    """
    if action_repeat < 1:
        raise InvalidArgument(f"action_repeat: must be at least 1, got {action_repeat}")
    if re.fullmatch(r"[a-z_]+-[a-z_-]+", task):
        return DMCEnv(task, seed, action_repeat)
    return GymEnv(task, seed, action_repeat)
