"""PA-AD (Sun et al. 2022): a director policy picks a unit direction d in the victim's ACTION space (trained
by RL with reward -r, SAC or PPO); the actor part realises it as an observation perturbation by PGD that
ASCENDS  cos(mu(s~) - mu(s), d) + ||mu(s~) - mu(s)||  over the eps-ball (the old MuJoCo reference code had
this step's sign inverted, SPEC §7). mu is the victim's deterministic action.

    python attacks/pa_ad.py --ckpt runs/<run>/model.pt --algo sac --attack-budget 50000 --seeds 2
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import Victim, project, random_start, standalone  # noqa: E402
from attacks.rl import add_learned_args, run_learned_attack  # noqa: E402

NAME = "pa_ad"
COLUMNS = {"sac": "PA-AD (SAC)", "ppo": "PA-AD (PPO)"}


def pa_objective(victim: Victim, obs: torch.Tensor, obs_tilde: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        clean_action = victim.actor.deterministic(obs)
    change = victim.actor.deterministic(obs_tilde) - clean_action
    return F.cosine_similarity(change, direction, dim=-1, eps=1e-8) + change.norm(dim=-1)


def pa_perturb(victim: Victim, obs_n: torch.Tensor, direction: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """PGD ascent of pa_objective from a uniform random start, step eps/steps, projected each step."""
    obs, direction = obs_n.unsqueeze(0), direction.unsqueeze(0)
    eps, step = victim.eps, victim.eps / steps
    x = random_start(obs, eps)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(pa_objective(victim, obs, x, direction).sum(), x)
        x = project(x.detach() + step * grad.sign(), obs, eps)  # ascend
    return x.detach()[0]


def realizer(victim: Victim, steps: int):
    def realize(obs_n: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        direction = action / (action.norm() + 1e-8)
        return pa_perturb(victim, obs_n, direction, steps)

    return realize


def add_args(parser, default_algo: str = "sac") -> None:
    add_learned_args(parser, default_algo)
    parser.add_argument("--pa-steps", type=int, default=10, help="PGD steps that realise the director's direction")


def evaluate(victim: Victim, args) -> dict:
    return run_learned_attack(victim, args, NAME, victim.act_dim, realizer(victim, args.pa_steps))


if __name__ == "__main__":
    standalone(__doc__, add_args, evaluate, lambda args: f"{NAME}_{args.algo}")
