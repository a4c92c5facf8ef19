"""MAD (Maximal Action Difference, Zhang et al. 2020): maximise the victim's normalized action change
sum(((m(s~) - m(s)) / sigma(s))^2) by SGLD, where m and sigma are the mean and std of the victim's
pre-tanh Gaussian at the clean s (twice the KL for a shared std). Signed noisy ascent, noise sqrt(2 step)/(i+2),
projected after each step; --mad-restarts independent starts (alternating between the reference's random-sign corner
of the step box and the whole ball) run as one batch and each state keeps its largest action change. Steps, step size
and restarts: Args.

Reference: SA-PPO src/policy_gradients/agent.py apply_attack, "action" (one start, step eps/steps); SA-DDPG
robust_ddpg.py attack_action (the same objective as an MSE, noiseless, one start in the step box).

    python attacks/mad.py --ckpt runs/<run>/model.pt --episodes 20
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import AttackError, Victim, project, rollout, standalone  # noqa: E402

SIDE_BY_SIDE = True  # its episodes run together (common.rollout_side_by_side)
NAME, COLUMN = "mad", "MAD"
# Defaults, declared once (Args and MADAttacker read them). References: SA-PPO apply_attack "action" (MuJoCo.json
# attack_steps 10, attack_step_eps "auto" = eps/steps, SGLD noise sqrt(2 step)/(i+2), one random-sign start) and
# SA-DDPG attack_action (defaults.json iteration 10, alpha "auto" = eps/10, noiseless, one start in the step box): 10
# steps of eps/10, one start. A step of 0.4 eps and 20 batched restarts reach >= 95 % of a converged optimiser's
# action change on every victim of results/attack_strength (one start stops far below it).
STEPS, STEP_SCALE, RESTARTS = 10, 4.0, 20


@dataclass(kw_only=True)
class Args:
    mad_steps: int = STEPS  # SGLD iterations
    mad_step_scale: float = STEP_SCALE  # step size in units of eps/steps (the references: 1)
    mad_restarts: int = RESTARTS  # random starts, run as one batch; each state keeps its largest action change


def action_change(victim: Victim, obs: torch.Tensor, obs_tilde: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        mean, log_std = victim.actor(obs)
    return (((victim.actor(obs_tilde)[0] - mean) / log_std.exp()) ** 2).sum(-1)


def sgld_maximize(objective, obs: torch.Tensor, eps: float, steps: int, step: float, restarts: int = 1) -> torch.Tensor:
    """objective(s, s~) per sample, ascended from `restarts` batched starts alternating between the reference's
    random-sign corner of the step box and a uniform draw from the whole ball; per sample, the start that ends
    highest."""
    n = len(obs)
    base = obs.repeat(restarts, *[1] * (obs.dim() - 1))
    corner = step * torch.randn_like(base).sign()
    anywhere = eps * (2 * torch.rand_like(base) - 1)
    whole_ball = (torch.arange(restarts, device=obs.device) % 2 == 1).repeat_interleave(n)
    x = base + torch.where(whole_ball.reshape(-1, *[1] * (obs.dim() - 1)), anywhere, corner)
    for i in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(base, x).sum(), x)
        noise = math.sqrt(2 * step) / (i + 2) * torch.randn_like(base)
        x = project(x.detach() + step * (grad + noise).sign(), base, eps)
    x = x.detach()
    if restarts == 1:
        return x
    with torch.no_grad():
        best = objective(base, x).reshape(restarts, n).argmax(0)
    return x.reshape(restarts, n, *x.shape[1:])[best, torch.arange(n)]


class MADAttacker:
    name = NAME
    batched = True  # common.rollout may pass the states of all running episodes at once

    def __init__(self, victim: Victim, steps: int = STEPS, step_scale: float = STEP_SCALE, restarts: int = RESTARTS):
        if steps < 1 or restarts < 1 or not step_scale > 0:
            raise AttackError("MAD needs steps >= 1, step scale > 0 and restarts >= 1")
        self.victim, self.steps, self.restarts = victim, steps, restarts
        self.step_size = step_scale * victim.eps / steps

    def reset(self) -> None:
        pass

    def objective(self, obs: torch.Tensor, obs_tilde: torch.Tensor) -> torch.Tensor:
        return action_change(self.victim, obs, obs_tilde)

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        """One state (obs_dim,) or a batch (n, obs_dim), each searched on its own."""
        obs = obs_n if obs_n.dim() == 2 else obs_n.unsqueeze(0)
        x = sgld_maximize(self.objective, obs, self.victim.eps, self.steps, self.step_size, self.restarts)
        return x if obs_n.dim() == 2 else x[0]


def attacker(victim: Victim, args) -> MADAttacker:
    return MADAttacker(victim, args.mad_steps, args.mad_step_scale, args.mad_restarts)


def evaluate(victim: Victim, args) -> dict:
    return {"stats": rollout(victim, attacker(victim, args), args.episodes, args.seed, args.stochastic)}


if __name__ == "__main__":
    standalone(__doc__, Args, evaluate, lambda args: NAME)
