"""PGD on the victim's own critic over the eps-ball around the true normalized state s. SAC kinds, PGD (minQ):
minimise mean_j Q_j(s, mu(s~)) (the critic keeps the true s; only the actor sees s~). PPO kinds, PGD (minV):
minimise V(s~), the value function at the perturbed state. Signed-gradient steps projected after each step (paper
Appendix D.3); --pgd-restarts R batched restarts, each state keeping its lowest objective, alternating between the
step box s + U(-step, step) and the whole ball (--pgd-start mixed). Steps, step size and restarts: Args.

Reference: SA-PPO src/policy_gradients/agent.py apply_attack, "critic": val_model(states) descended at the
perturbed states, from a random start in the step box; SA-DDPG robust_ddpg.py attack_critic, the same on
mean Q(s, mu(s~)). results/attack_strength has the measured strength of the defaults against a converged optimiser.

    python attacks/pgd.py --ckpt runs/<run>/model.pt --episodes 20
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Annotated

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import PGD_STARTS, AttackError, PGDStart, Victim, pgd_minimize, rollout, standalone  # noqa: E402

SIDE_BY_SIDE = True  # its episodes run together (common.rollout_side_by_side)
NAME, COLUMN = "pgd", "PGD (minQ)"
COLUMNS = {"sac": "PGD (minQ)", "ppo": "PGD (minV)"}  # by victim kind


# Defaults, declared once (Args and PGDAttacker read them; Robust Sarsa's PGD and RS+MAD use them too). References:
# SA-PPO apply_attack "critic" and "sarsa"/"sarsa+action" (MuJoCo.json attack_steps 10, attack_step_eps "auto" =
# eps/steps, one start in the step box) and SA-DDPG attack_critic (defaults.json iteration 10, alpha "auto" =
# eps/iteration, one start U(-alpha, alpha)): 10 steps of eps/10, no restarts. That stops in a local minimum of the
# critic; a step of 0.4 eps and 20 restarts (one batched forward/backward) reach >= 95 % of a converged optimiser's
# drop on every victim of results/attack_strength.
STEPS, STEP_SCALE, RESTARTS, START = 10, 4.0, 20, "mixed"


@dataclass(kw_only=True)
class Args:
    pgd_steps: int = STEPS  # PGD iterations (also Robust Sarsa's PGD on its critic)
    pgd_step_scale: float = STEP_SCALE  # step size in units of eps/steps (the references: 1)
    pgd_restarts: int = RESTARTS  # random restarts, run as one batch; each state keeps its lowest objective
    pgd_start: Annotated[PGDStart, tyro.conf.arg(
        help="random starts: the step box s + U(-step, step), the whole ball, or mixed (restarts alternate, step box "
             "first)")] = START


def column(victim: Victim) -> str:
    return COLUMNS[victim.kind]


class PGDAttacker:
    name = NAME
    batched = True  # common.rollout may pass the states of all running episodes at once

    def __init__(self, victim: Victim, steps: int = STEPS, step_scale: float = STEP_SCALE, critic=None,
                 restarts: int = RESTARTS, start: str = START, through_mean: bool = False):
        if steps < 1 or restarts < 1 or not step_scale > 0 or start not in PGD_STARTS:
            raise AttackError(f"PGD needs steps >= 1, step scale > 0, restarts >= 1 and a start in {PGD_STARTS}")
        self.victim, self.steps, self.restarts, self.start = victim, steps, restarts, start
        self.step_size = step_scale * victim.eps / steps
        self.critic = victim.critic if critic is None else critic  # Robust Sarsa plugs its own Q(s, a) here
        self.minimise_value = critic is None and victim.kind == "ppo"  # PPO victims have V(s), not Q(s, a)
        if through_mean and victim.kind != "ppo":
            raise AttackError("through_mean applies to PPO-kind victims (a SAC victim's action is its tanh mean)")
        # Q's action input: the executed action, or (PPO victims, Robust Sarsa --rs-action mean) the unclipped
        # Gaussian mean, whose gradient survives in the dimensions the clip to the action box saturates
        self.action = victim.actor.mean if through_mean else victim.actor.deterministic

    def reset(self) -> None:
        pass

    def objective(self, obs: torch.Tensor, obs_tilde: torch.Tensor) -> torch.Tensor:
        if self.minimise_value:
            return self.critic(obs_tilde)
        return self.critic(obs, self.action(obs_tilde)).mean(0)

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        """One state (obs_dim,) or a batch (n, obs_dim), each searched on its own."""
        obs = obs_n if obs_n.dim() == 2 else obs_n.unsqueeze(0)
        x = pgd_minimize(self.objective, obs, self.victim.eps, self.steps, self.step_size, self.restarts, self.start)
        return x if obs_n.dim() == 2 else x[0]


def attacker(victim: Victim, args) -> PGDAttacker:
    return PGDAttacker(victim, args.pgd_steps, args.pgd_step_scale, restarts=args.pgd_restarts, start=args.pgd_start)


def evaluate(victim: Victim, args) -> dict:
    return {"stats": rollout(victim, attacker(victim, args), args.episodes, args.seed, args.stochastic)}


if __name__ == "__main__":
    standalone(__doc__, Args, evaluate, lambda args: NAME)
