"""MAD (Maximal Action Difference, Zhang et al. 2020): maximise the victim's normalized action change
sum(((m(s~) - m(s)) / sigma(s))^2) by SGLD, where m and sigma are the mean and std of the victim's
pre-tanh Gaussian at the clean s (twice the KL for a shared std). 10 iterations of step eps/10 from a
random-sign start, noisy signed ascent with noise sqrt(2 step)/(i+2), projected after each step.

    python attacks/mad.py --ckpt runs/<run>/model.pt --episodes 20
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import Victim, project, rollout, standalone  # noqa: E402

NAME, COLUMN = "mad", "MAD"


@dataclass(kw_only=True)
class Args:
    mad_steps: int = 10  # SGLD iterations (step eps/steps)


def action_change(victim: Victim, obs: torch.Tensor, obs_tilde: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        mean, log_std = victim.actor(obs)
    return (((victim.actor(obs_tilde)[0] - mean) / log_std.exp()) ** 2).sum(-1)


def sgld_maximize(objective, obs: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    step = eps / steps
    x = obs + step * torch.randn_like(obs).sign()
    for i in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x).sum(), x)
        noise = math.sqrt(2 * step) / (i + 2) * torch.randn_like(obs)
        x = project(x.detach() + step * (grad + noise).sign(), obs, eps)
    return x.detach()


class MADAttacker:
    name = NAME

    def __init__(self, victim: Victim, steps: int = 10):
        self.victim, self.steps = victim, steps

    def reset(self) -> None:
        pass

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        obs = obs_n.unsqueeze(0)
        return sgld_maximize(lambda x: action_change(self.victim, obs, x), obs, self.victim.eps, self.steps)[0]


def evaluate(victim: Victim, args) -> dict:
    return {"stats": rollout(victim, MADAttacker(victim, args.mad_steps), args.episodes, args.seed, args.stochastic)}


if __name__ == "__main__":
    standalone(__doc__, Args, evaluate, lambda args: NAME)
