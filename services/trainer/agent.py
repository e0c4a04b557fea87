"""TDMPC2: the agent. Learns a world model from sequences and acts by MPPI
planning in its latent space, seeded with trajectories of its policy prior.

    agent = TDMPC2(AgentConfig(obs_dim=3, action_dim=1, model_size="tiny"), seed=1)
    metrics = agent.update(obs, action, reward, done)    # (H+1, B, obs), (H, B, ...), ...
    action = agent.act(obs, t0=True)                     # MPPI (cfg.mpc) or the policy prior
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from rewind_trainer.hparams import AgentConfig
from rewind_trainer.scale import RunningScale
from rewind_trainer.twohot import TwoHot
from rewind_trainer.world_model import WorldModel


class TDMPC2:
    """TD-MPC2 for flat observations on CPU or CUDA.

    Args:
        cfg: hyperparameters (see hparams.py).
        seed: seeds the agent's own generator (planning noise, Q-pair choice)
            and torch's global one (initialisation, dropout).
        device: where the networks live.
    """

    def __init__(self, cfg: AgentConfig, seed: int = 1, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.model = WorldModel(cfg).to(self.device)
        m = self.model
        self.optim = torch.optim.Adam([
            {"params": m.encoder.parameters(), "lr": cfg.lr * cfg.enc_lr_scale},
            {"params": m.dynamics.parameters()},
            {"params": m.reward_head.parameters()},
            {"params": m.qs.parameters()},
        ], lr=cfg.lr, capturable=False)
        self.pi_optim = torch.optim.Adam(m.pi_head.parameters(), lr=cfg.lr, eps=1e-5)
        self.scale = RunningScale(cfg.tau)
        self.twohot = TwoHot(cfg.num_bins, cfg.vmin, cfg.vmax)
        self.discount = cfg.discount
        self._prev_mean = torch.zeros(cfg.horizon, cfg.action_dim, device=self.device)
        self.model.eval()

    @property
    def mode(self) -> str:
        """What act() does: 'mppi' planning, or the 'policy' prior alone (cfg.mpc = False)."""
        return "mppi" if self.cfg.mpc else "policy"

    def set_lr(self, lr: float) -> None:
        """Change the learning rate (a safe override on resume)."""
        for group, scale in zip(self.optim.param_groups, (self.cfg.enc_lr_scale, 1, 1, 1), strict=True):
            group["lr"] = lr * scale
        for group in self.pi_optim.param_groups:
            group["lr"] = lr
        self.cfg = self.cfg.replace(lr=lr)

    @contextmanager
    def own_generator(self, seed: int) -> Iterator[None]:
        """Act with a generator seeded `seed`, then put the agent's generator and plan back.

        Evaluation uses it, so that evaluating leaves training's randomness untouched.
        """
        saved, prev_mean = self.generator.get_state(), self._prev_mean.clone()
        self.generator.manual_seed(seed)
        try:
            yield
        finally:
            self.generator.set_state(saved)
            self._prev_mean.copy_(prev_mean)

    # -- value helpers -------------------------------------------------------

    def _q_pair(self, z, a, *, reduce: str, target: bool = False, detach: bool = False) -> torch.Tensor:
        """Two random Q heads, decoded to scalars, reduced by 'min' or 'avg'."""
        logits = self.model.q(z, a, target=target, detach=detach)
        pair = torch.randperm(self.cfg.num_q, generator=self.generator, device=self.device)[:2]
        q1, q2 = self.twohot.decode(logits[pair[0]]), self.twohot.decode(logits[pair[1]])
        return torch.min(q1, q2) if reduce == "min" else (q1 + q2) / 2

    @torch.no_grad()
    def _td_target(self, next_z: torch.Tensor, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        _, action, _ = self.model.pi(next_z, self.generator)
        q = self._q_pair(next_z, action, reduce="min", target=True)
        return reward + self.discount * (1 - done) * q

    # -- learning ------------------------------------------------------------

    def update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, done: torch.Tensor) -> dict:
        """One gradient step on a batch in TD-MPC2's layout; returns the losses.

        Args:
            obs: (H+1, B, obs_dim); action: (H, B, action_dim); reward, done: (H, B, 1).
        """
        cfg, m = self.cfg, self.model
        if obs.shape[0] != cfg.horizon + 1 or action.shape[0] != cfg.horizon:
            raise ValueError(f"batch: expected {cfg.horizon + 1} observations and {cfg.horizon} actions per "
                             f"sequence, got {obs.shape[0]} and {action.shape[0]}")
        obs, action, reward, done = (t.to(self.device) for t in (obs, action, reward, done))
        m.train()
        with torch.no_grad():
            next_z = m.encode(obs[1:])
            td_targets = self._td_target(next_z, reward, done)

        self.optim.zero_grad(set_to_none=True)
        zs = torch.empty(cfg.horizon + 1, obs.shape[1], cfg.latent_dim, device=self.device)
        z = m.encode(obs[0])
        zs[0] = z
        consistency = 0.0
        for t in range(cfg.horizon):
            z = m.next(z, action[t])
            consistency = consistency + F.mse_loss(z, next_z[t]) * cfg.rho**t
            zs[t + 1] = z

        _zs = zs[:-1]
        qs = m.q(_zs, action)
        reward_logits = m.reward(_zs, action)
        reward_loss, value_loss = 0.0, 0.0
        for t in range(cfg.horizon):
            reward_loss = reward_loss + self.twohot.cross_entropy(reward_logits[t], reward[t]).mean() * cfg.rho**t
            for q in range(cfg.num_q):
                value_loss = value_loss + self.twohot.cross_entropy(qs[q, t], td_targets[t]).mean() * cfg.rho**t
        consistency = consistency / cfg.horizon
        reward_loss = reward_loss / cfg.horizon
        value_loss = value_loss / (cfg.horizon * cfg.num_q)
        total = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in self.optim.param_groups for p in g["params"]], cfg.grad_clip_norm)
        self.optim.step()

        pi_loss, entropy = self._update_pi(zs.detach())
        m.soft_update_targets(cfg.tau)
        m.eval()
        return {
            "consistency_loss": consistency.item(), "reward_loss": reward_loss.item(),
            "value_loss": value_loss.item(), "pi_loss": pi_loss, "total_loss": total.item(),
            "grad_norm": grad_norm.item(), "pi_entropy": entropy, "pi_scale": self.scale.value.item(),
        }

    def _update_pi(self, zs: torch.Tensor) -> tuple[float, float]:
        """Policy prior: maximise scaled Q plus an entropy bonus along the imagined latents."""
        cfg = self.cfg
        self.pi_optim.zero_grad(set_to_none=True)
        _, action, info = self.model.pi(zs, self.generator)
        q = self._q_pair(zs, action, reduce="avg", detach=True)
        self.scale.update(q[0])
        q = self.scale(q)
        rho = torch.pow(cfg.rho, torch.arange(len(q), device=self.device))
        loss = (-(cfg.entropy_coef * info["scaled_entropy"] + q).mean(dim=(1, 2)) * rho).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.pi_head.parameters(), cfg.grad_clip_norm)
        self.pi_optim.step()
        return loss.item(), info["entropy"].detach().mean().item()

    # -- acting --------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: torch.Tensor, t0: bool = False, eval_mode: bool = False) -> torch.Tensor:
        """An action in [-1, 1] for one observation (obs_dim,)."""
        obs = obs.to(self.device, torch.float32).unsqueeze(0)
        if self.cfg.mpc:
            return self.plan(obs, t0=t0, eval_mode=eval_mode).cpu()
        mean, action, _ = self.model.pi(self.model.encode(obs), self.generator)
        return (mean if eval_mode else action)[0].cpu()

    @torch.no_grad()
    def _estimate_value(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Return of each action sequence: imagined rewards, then a bootstrapped Q."""
        value, discount = 0.0, 1.0
        for t in range(self.cfg.horizon):
            reward = self.twohot.decode(self.model.reward(z, actions[t]))
            z = self.model.next(z, actions[t])
            value = value + discount * reward
            discount *= self.discount
        _, action, _ = self.model.pi(z, self.generator)
        return value + discount * self._q_pair(z, action, reduce="avg")

    @torch.no_grad()
    def plan(self, obs: torch.Tensor, t0: bool = False, eval_mode: bool = False) -> torch.Tensor:
        """MPPI in latent space, seeded with policy-prior trajectories and last step's plan."""
        cfg, m, g = self.cfg, self.model, self.generator
        A, H = cfg.action_dim, cfg.horizon
        z = m.encode(obs)
        pi_actions = torch.empty(H, cfg.num_pi_trajs, A, device=self.device)
        if cfg.num_pi_trajs:
            _z = z.repeat(cfg.num_pi_trajs, 1)
            for t in range(H - 1):
                pi_actions[t] = m.pi(_z, g)[1]
                _z = m.next(_z, pi_actions[t])
            pi_actions[-1] = m.pi(_z, g)[1]

        z = z.repeat(cfg.num_samples, 1)
        mean = torch.zeros(H, A, device=self.device)
        std = torch.full((H, A), cfg.max_std, device=self.device)
        if not t0:
            mean[:-1] = self._prev_mean[1:]
        actions = torch.empty(H, cfg.num_samples, A, device=self.device)
        actions[:, : cfg.num_pi_trajs] = pi_actions

        for _ in range(cfg.iterations):
            noise = torch.randn(H, cfg.num_samples - cfg.num_pi_trajs, A, generator=g, device=self.device)
            actions[:, cfg.num_pi_trajs:] = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1, 1)
            value = torch.nan_to_num(self._estimate_value(z, actions), nan=0.0)
            elite = torch.topk(value.squeeze(1), cfg.num_elites, dim=0).indices
            elite_value, elite_actions = value[elite], actions[:, elite]
            score = torch.exp(cfg.temperature * (elite_value - elite_value.max(0).values))
            score = score / score.sum(0)
            mean = (score.unsqueeze(0) * elite_actions).sum(dim=1) / (score.sum(0) + 1e-9)
            std = ((score.unsqueeze(0) * (elite_actions - mean.unsqueeze(1)) ** 2).sum(dim=1)
                   / (score.sum(0) + 1e-9)).sqrt().clamp(cfg.min_std, cfg.max_std)

        # Pick one elite by its score (Gumbel-max), act on its first step.
        gumbel = -torch.log(-torch.log(torch.rand(score.shape[0], generator=g, device=self.device) + 1e-20) + 1e-20)
        choice = torch.argmax(torch.log(score.squeeze(1) + 1e-20) + gumbel)
        a, first_std = elite_actions[0, choice], std[0]
        if not eval_mode:
            a = a + first_std * torch.randn(A, generator=g, device=self.device)
        self._prev_mean.copy_(mean)
        return a.clamp(-1, 1)

    # -- state ---------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically (model, optimisers, scale, RNG, plan).

        A deep copy: it can be serialised in the background while training goes on.
        """
        return copy.deepcopy({
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scale": self.scale.state_dict(),
            "generator": self.generator.get_state(),
            "prev_mean": self._prev_mean,
        })

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])
        self.scale.load_state_dict(state["scale"])
        self.generator.set_state(state["generator"])
        self._prev_mean.copy_(state["prev_mean"])


def policy_tensors(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors acting needs (encoder, dynamics, reward, policy, Qs) of a model's state, for deployment files."""
    return {k: v.detach().cpu().contiguous() for k, v in model_state.items() if not k.startswith("target_qs.")}
