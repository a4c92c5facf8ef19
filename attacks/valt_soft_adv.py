"""The adversary a checkpoint carries (VALT-SOFT's nu_phi, SAC-PPO's PPO adversary, ATLA-PPO's) as one more
attacker, with its deterministic (mean) output: the perturbation s + eps * tanh(mean(s)) (ATLA: hardtanh, as it
trained) with eps = the evaluation radius, or, for a director (PA-SAC-PPO, PA-ATLA-PPO), the direction of its
mean realised by PA-AD's PGD (attacks/pa_ad.py). VALT-SOFT re-initialises its adversary every --adv-reset-every
steps; its checkpoints keep the last trained one (`adversary_trained`), which this attack uses when present.

    python attacks/valt_soft_adv.py --ckpt runs/<valt_soft_run>/model.pt
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import AttackError, NoArgs, Victim, rollout, standalone  # noqa: E402
from attacks.nets import ADVERSARIES, adversary_state, build_adversary  # noqa: E402
from attacks.pa_ad import pa_perturb  # noqa: E402

NAME, COLUMN = "valt_soft_adv", "Own adversary"


def has_adversary(victim: Victim) -> bool:
    return "adversary" in victim.ckpt and victim.ckpt["arch"].get("adversary") in ADVERSARIES


class OwnAdversaryAttacker:
    name = NAME

    def __init__(self, victim: Victim):
        if "adversary" not in victim.ckpt:
            raise AttackError(f"{victim.ckpt_path} carries no adversary network (method {victim.method})")
        self.victim, self.eps = victim, victim.eps
        self.output, self.director = build_adversary(victim.ckpt, victim.device)

    def reset(self) -> None:
        pass

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.output(obs_n)
        if self.director:
            return pa_perturb(self.victim, obs_n, out / (out.norm() + 1e-8))
        return obs_n + self.eps * out


def attacker(victim: Victim, args) -> OwnAdversaryAttacker:
    return OwnAdversaryAttacker(victim)


def evaluate(victim: Victim, args) -> dict:
    return {"stats": rollout(victim, attacker(victim, args), args.episodes, args.seed, args.stochastic),
            "adversary": adversary_state(victim.ckpt)[1]}


if __name__ == "__main__":
    standalone(__doc__, NoArgs, evaluate, lambda args: NAME)
