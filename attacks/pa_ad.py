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


# Defaults of the realisation, declared once (PAArgs, pa_perturb and realizer read them). Reference: paad_adv_rl
# code_mujoco/trainer_atla/policy_gradients/agent.py perturb_obs_fgsm, one FGSM step of size eps from a start in the
# step box U(-eps/attack_steps, eps/attack_steps), configs config_*_pa_atla_ppo.json attack_steps 10 (and the
# objective's sign inverted, SPEC §7). The cosine term needs small final steps to align the action change with d
# (constant steps stop short on some victims), the restarts find the basin: a step decaying from 0.3 eps to 0.01
# eps, 20 restarts, reach >= 95 % of a converged optimiser on every victim of results/attack_strength.
STEPS, STEP_SCALE, FINAL_STEP_SCALE, RESTARTS, START = 20, 6.0, 0.2, 20, "mixed"


@dataclass(kw_only=True)
class PAArgs:
    pa_steps: int = STEPS  # PA-AD: PGD steps that realise the director's direction
    pa_step_scale: float = STEP_SCALE  # PA-AD: the realisation's first step, in units of eps/steps
    pa_final_step_scale: float = FINAL_STEP_SCALE  # PA-AD: its last step (geometric decay), in units of eps/steps
    pa_restarts: int = RESTARTS  # PA-AD: batched PGD restarts of the realisation (highest objective kept)


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


def pa_perturb(victim: Victim, obs_n: torch.Tensor, direction: torch.Tensor, steps: int = STEPS,
               restarts: int = RESTARTS, start: str = START, step_scale: float = STEP_SCALE,
               final_step_scale: float = FINAL_STEP_SCALE) -> torch.Tensor:
    """PGD ASCENT of pa_objective, projected each step, the step decaying geometrically from step_scale * eps/steps to
    final_step_scale * eps/steps; `restarts` batched random starts alternating between the step box (the references'
    start) and the whole ball, the highest objective kept."""
    obs, direction = obs_n.unsqueeze(0), direction.unsqueeze(0)
    eps = victim.eps
    x = pgd_minimize(lambda o, x: -pa_objective(victim, o, x, direction.expand(len(o), -1)), obs, eps, steps,
                     step_scale * eps / steps, restarts, start, final_step_scale * eps / steps)
    return x[0]


def realizer(victim: Victim, steps: int = STEPS, restarts: int = RESTARTS, start: str = START,
             step_scale: float = STEP_SCALE, final_step_scale: float = FINAL_STEP_SCALE):
    def realize(obs_n: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        direction = action / (action.norm() + 1e-8)
        return pa_perturb(victim, obs_n, direction, steps, restarts, start, step_scale, final_step_scale)

    return realize


def evaluate(victim: Victim, args) -> dict:
    if args.pa_steps < 1 or args.pa_restarts < 1 or not (args.pa_step_scale > 0 and args.pa_final_step_scale > 0):
        raise AttackError("--pa-steps and --pa-restarts must be >= 1, --pa-step-scale and --pa-final-step-scale > 0")
    return run_learned_attack(victim, args, NAME, victim.act_dim,
                              realizer(victim, args.pa_steps, args.pa_restarts, step_scale=args.pa_step_scale,
                                       final_step_scale=args.pa_final_step_scale))


if __name__ == "__main__":
    standalone(__doc__, Args, evaluate, lambda args: f"{NAME}_{args.algo}")
