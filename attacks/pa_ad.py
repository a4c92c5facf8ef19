"""PA-AD (Sun et al. 2022): a director policy picks a unit direction d in the victim's ACTION space (trained
by RL with reward -r, SAC or PPO); the actor part realises it as an observation perturbation by PGD that
ASCENDS  cos(mu(s~) - mu(s), d) + ||mu(s~) - mu(s)||  over the eps-ball (the MuJoCo reference code ascends with the sign inverted, SPEC §7). mu is the victim's
deterministic action (SAC kinds; PPO kinds: its unclipped Gaussian mean, as the reference: see policy_output).

    python attacks/pa_ad.py --ckpt runs/<run>/model.pt --algo sac --attack-budget 50000 --seeds 2
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import AttackError, SaveDirArgs, Victim, pgd_minimize, standalone  # noqa: E402
from attacks.learned import LearnedArgs, run_learned_attack  # noqa: E402

NAME = "pa_ad"
COLUMNS = {"sac": "PA-AD (SAC)", "ppo": "PA-AD (PPO)"}


@dataclass(kw_only=True)
class PAArgs:
    pa_steps: int = 10  # PA-AD: PGD steps that realise the director's direction
    pa_restarts: int = 5  # PA-AD: batched PGD restarts of the realisation (highest objective kept)


@dataclass(kw_only=True)
class Args(PAArgs, LearnedArgs, SaveDirArgs):
    """PA-AD's flags."""


def policy_output(victim: Victim, obs: torch.Tensor) -> torch.Tensor:
    """What the realisation moves. SAC kinds: the executed tanh action. PPO kinds: the Gaussian mean BEFORE the clip
    to the action box, as the reference (paad_adv_rl code_mujoco/trainer_atla/policy_gradients/agent.py
    perturb_obs_fgsm: policy_model(s)[0], the mean): the clipped action's gradient vanishes in every saturated
    dimension, where the realisation could not pull the mean back into the box."""
    return victim.actor.deterministic(obs) if victim.kind == "sac" else victim.actor.mean(obs)


def pa_objective(victim: Victim, obs: torch.Tensor, obs_tilde: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        clean_action = policy_output(victim, obs)
    change = policy_output(victim, obs_tilde) - clean_action
    return F.cosine_similarity(change, direction, dim=-1, eps=1e-8) + change.norm(dim=-1)


def pa_perturb(victim: Victim, obs_n: torch.Tensor, direction: torch.Tensor, steps: int = 10, restarts: int = 5,
               start: str = "mixed") -> torch.Tensor:
    """PGD ASCENT of pa_objective, step eps/steps, projected each step; `restarts` batched random starts alternating
    between the step box (the references' start) and the whole ball, the highest objective kept."""
    obs, direction = obs_n.unsqueeze(0), direction.unsqueeze(0)
    eps = victim.eps
    x = pgd_minimize(lambda o, x: -pa_objective(victim, o, x, direction.expand(len(o), -1)), obs, eps, steps,
                     eps / steps, restarts, start)
    return x[0]


def realizer(victim: Victim, steps: int, restarts: int = 5, start: str = "mixed"):
    def realize(obs_n: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        direction = action / (action.norm() + 1e-8)
        return pa_perturb(victim, obs_n, direction, steps, restarts, start)

    return realize


def evaluate(victim: Victim, args) -> dict:
    if args.pa_steps < 1 or args.pa_restarts < 1:
        raise AttackError("--pa-steps and --pa-restarts must be >= 1")
    return run_learned_attack(victim, args, NAME, victim.act_dim,
                              realizer(victim, args.pa_steps, args.pa_restarts))


if __name__ == "__main__":
    standalone(__doc__, Args, evaluate, lambda args: f"{NAME}_{args.algo}")
