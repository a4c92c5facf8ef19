"""PA-AD (Sun et al. 2022): a director policy picks a unit direction d in the victim's ACTION space (trained
by RL with reward -r, SAC or PPO); the actor part realises it as an observation perturbation by PGD that
ASCENDS  cos(mu(s~) - mu(s), d) + ||mu(s~) - mu(s)||  over the eps-ball (the old MuJoCo reference code had
this step's sign inverted, SPEC §7). mu is the victim's deterministic action (SAC kinds; PPO kinds: its unclipped
Gaussian mean, as the reference: see policy_output).

    python attacks/pa_ad.py --ckpt runs/<run>/model.pt --algo sac --attack-budget 50000 --seeds 2
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import AttackError, Victim, pgd_minimize, standalone  # noqa: E402
from attacks.rl import add_learned_args, run_learned_attack  # noqa: E402

NAME = "pa_ad"
COLUMNS = {"sac": "PA-AD (SAC)", "ppo": "PA-AD (PPO)"}


def policy_output(victim: Victim, obs: torch.Tensor) -> torch.Tensor:
    """What the realisation moves. SAC kinds: the executed tanh action. PPO kinds: the Gaussian mean BEFORE the clip
    to the action box, as the reference (paad_adv_rl code_mujoco/trainer_atla/policy_gradients/agent.py
    perturb_obs_fgsm: policy_model(s)[0], the mean): the clipped action's gradient vanishes in every saturated
    dimension, and trained PPO victims saturate often (the Hopper study's median seeds: 21-22 % of the dimensions,
    at 47-59 % of the states of an episode), where the realisation could not pull the mean back into the box."""
    return victim.actor.deterministic(obs) if victim.kind == "sac" else victim.actor.mean(obs)


def pa_objective(victim: Victim, obs: torch.Tensor, obs_tilde: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        clean_action = policy_output(victim, obs)
    change = policy_output(victim, obs_tilde) - clean_action
    return F.cosine_similarity(change, direction, dim=-1, eps=1e-8) + change.norm(dim=-1)


def pa_perturb(victim: Victim, obs_n: torch.Tensor, direction: torch.Tensor, steps: int = 10, restarts: int = 5,
               start: str = "mixed") -> torch.Tensor:
    """PGD ASCENT of pa_objective, step eps/steps, projected each step; `restarts` batched random starts alternating
    between the step box (the references' start) and the whole ball, the highest objective kept (one start from the
    step box reached 90 % of a 100-step 5-restart ascent on the trained fixture, 5 mixed ones 98 %)."""
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


def add_args(parser, default_algo: str = "sac") -> None:
    add_learned_args(parser, default_algo)
    parser.add_argument("--pa-steps", type=int, default=10, help="PGD steps that realise the director's direction")
    parser.add_argument("--pa-restarts", type=int, default=5, help="batched PGD restarts of the realisation (highest kept)")


def evaluate(victim: Victim, args) -> dict:
    if args.pa_steps < 1 or args.pa_restarts < 1:
        raise AttackError("--pa-steps and --pa-restarts must be >= 1")
    return run_learned_attack(victim, args, NAME, victim.act_dim,
                              realizer(victim, args.pa_steps, args.pa_restarts))


if __name__ == "__main__":
    standalone(__doc__, add_args, evaluate, lambda args: f"{NAME}_{args.algo}")
