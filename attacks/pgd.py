"""PGD on the victim's own critic over the eps-ball around the true normalized state s. SAC kinds, PGD (minQ):
minimise mean_j Q_j(s, mu(s~)) (the critic keeps the true s; only the actor sees s~). PPO kinds, PGD (minV):
minimise V(s~), the value function at the perturbed state. 10 signed-gradient steps of eps/10, projected after each
step (paper Appendix D.3); --pgd-restarts R (default 5, batched) keeps each state's lowest objective, the restarts
alternating between the step box s + U(-eps/10, eps/10) and the whole ball (--pgd-start mixed).

Reference: SA-PPO src/policy_gradients/agent.py apply_attack, "critic": val_model(states) descended at the
perturbed states, from a random start in the step box. attacks/README.md has the measured strength of each start.

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

NAME, COLUMN = "pgd", "PGD (minQ)"
COLUMNS = {"sac": "PGD (minQ)", "ppo": "PGD (minV)"}  # by victim kind


@dataclass(kw_only=True)
class Args:
    pgd_steps: int = 10  # PGD iterations, step eps/steps (also Robust Sarsa's PGD on its critic)
    pgd_restarts: int = 5  # random restarts, run as one batch; each state keeps its lowest objective
    pgd_start: Annotated[PGDStart, tyro.conf.arg(
        help="random starts: the step box s + U(-step, step), the whole ball, or mixed (restarts alternate, step box "
             "first)")] = "mixed"


def column(victim: Victim) -> str:
    return COLUMNS[victim.kind]


class PGDAttacker:
    name = NAME

    def __init__(self, victim: Victim, steps: int = 10, step_size: float | None = None, critic=None, restarts: int = 5,
                 start: str = "mixed", through_mean: bool = False):
        if steps < 1 or restarts < 1 or start not in PGD_STARTS:
            raise AttackError(f"PGD needs steps >= 1, restarts >= 1 and a start in {PGD_STARTS}")
        self.victim, self.steps, self.restarts, self.start = victim, steps, restarts, start
        self.step_size = victim.eps / steps if step_size is None else step_size
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
        obs = obs_n.unsqueeze(0)
        return pgd_minimize(self.objective, obs, self.victim.eps, self.steps, self.step_size, self.restarts,
                            self.start)[0]


def evaluate(victim: Victim, args) -> dict:
    attacker = PGDAttacker(victim, args.pgd_steps, restarts=args.pgd_restarts, start=args.pgd_start)
    return {"stats": rollout(victim, attacker, args.episodes, args.seed, args.stochastic)}


if __name__ == "__main__":
    standalone(__doc__, Args, evaluate, lambda args: NAME)
