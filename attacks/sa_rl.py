"""SA-RL (Zhang et al. 2021): an adversary policy, observation -> perturbation eps * a with a in [-1, 1]^d
(SAC: tanh-squashed actor; PPO: tanh of a Gaussian sample), trained by RL with reward -r against the frozen
victim. Evaluated with its mean action; several seeds, the strongest is kept; trained attackers are saved
and can be re-evaluated with --load.

    python attacks/sa_rl.py --ckpt runs/<run>/model.pt --algo ppo --attack-budget 50000 --seeds 2
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import SaveDirArgs, Victim, standalone  # noqa: E402
from attacks.learned import LearnedArgs, run_learned_attack  # noqa: E402

NAME = "sa_rl"
COLUMNS = {"sac": "SA-RL (SAC)", "ppo": "SA-RL (PPO)"}


@dataclass(kw_only=True)
class Args(LearnedArgs, SaveDirArgs):
    """SA-RL's flags."""


def realizer(victim: Victim):
    def realize(obs_n: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return obs_n + victim.eps * action.clamp(-1.0, 1.0)

    return realize


def evaluate(victim: Victim, args) -> dict:
    return run_learned_attack(victim, args, NAME, victim.obs_dim, realizer(victim))


if __name__ == "__main__":
    standalone(__doc__, Args, evaluate, lambda args: f"{NAME}_{args.algo}")
