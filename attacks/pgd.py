"""PGD (minQ): minimise the victim's own critic, mean_j Q_j(s, mu(s~)), over the eps-ball around the true
normalized state s (the critic keeps the true s; only the actor sees s~). 10 signed-gradient steps of eps/10
from a uniform random start, projected after each step (paper Appendix D.3).

    python attacks/pgd.py --ckpt runs/<run>/model.pt --episodes 20
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import Victim, pgd_minimize, rollout, standalone  # noqa: E402

NAME, COLUMN = "pgd", "PGD (minQ)"


class PGDAttacker:
    name = NAME

    def __init__(self, victim: Victim, steps: int = 10, step_size: float | None = None, critic=None):
        self.victim, self.steps = victim, steps
        self.step_size = victim.eps / steps if step_size is None else step_size
        self.critic = victim.critic if critic is None else critic  # Robust Sarsa plugs its own Q here

    def reset(self) -> None:
        pass

    def objective(self, obs: torch.Tensor, obs_tilde: torch.Tensor) -> torch.Tensor:
        return self.critic(obs, self.victim.actor.deterministic(obs_tilde)).mean(0)

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        obs = obs_n.unsqueeze(0)
        return pgd_minimize(lambda x: self.objective(obs, x), obs, self.victim.eps, self.steps, self.step_size)[0]


def add_args(parser) -> None:
    parser.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations (step eps/steps)")


def evaluate(victim: Victim, args) -> dict:
    attacker = PGDAttacker(victim, args.pgd_steps)
    return {"stats": rollout(victim, attacker, args.episodes, args.seed, args.stochastic)}


if __name__ == "__main__":
    standalone(__doc__, add_args, evaluate, lambda args: NAME)
