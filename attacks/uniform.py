"""Uniform random noise: s~ = s + U(-eps, eps) per dimension, every step.

    python attacks/uniform.py --ckpt runs/<run>/model.pt --episodes 20
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import NoArgs, Victim, rollout, standalone, uniform_in_ball  # noqa: E402

SIDE_BY_SIDE = True  # its episodes run together (common.rollout_side_by_side)
NAME, COLUMN = "uniform", "Uniform"


class UniformAttacker:
    name = NAME
    batched = True  # common.rollout may pass the states of all running episodes at once

    def __init__(self, victim: Victim):
        self.eps = victim.eps

    def reset(self) -> None:
        pass

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        return uniform_in_ball(obs_n, self.eps)


def attacker(victim: Victim, args) -> UniformAttacker:
    return UniformAttacker(victim)


def evaluate(victim: Victim, args) -> dict:
    return {"stats": rollout(victim, attacker(victim, args), args.episodes, args.seed, args.stochastic)}


if __name__ == "__main__":
    standalone(__doc__, NoArgs, evaluate, lambda args: NAME)
