"""The adversary a checkpoint carries (VALT-SOFT's nu_phi, SAC-PPO's PPO adversary, ATLA-PPO's) as one more
attacker, with its deterministic (mean) output: the perturbation s + eps * tanh(mean(s)) (ATLA: hardtanh, as it
trained) with eps = the evaluation radius, or, for a director (PA-SAC-PPO, PA-ATLA-PPO), the direction of its
mean realised by PA-AD's PGD (attacks/pa_ad.py).

    python attacks/valt_soft_adv.py --ckpt runs/<valt_soft_run>/model.pt
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ppo  # noqa: E402
import sac  # noqa: E402
from attacks.common import AttackError, Victim, rollout, standalone  # noqa: E402
from attacks.pa_ad import pa_perturb  # noqa: E402

KINDS = ("tanh_gaussian_obs", "ppo_gaussian_obs", "ppo_director_action", "atla_hardtanh_obs", "atla_director_action")

NAME, COLUMN = "valt_soft_adv", "Own adversary"


def has_adversary(victim: Victim) -> bool:
    return "adversary" in victim.ckpt and victim.ckpt["arch"].get("adversary") in KINDS


class OwnAdversaryAttacker:
    name = NAME

    def __init__(self, victim: Victim):
        if not has_adversary(victim):
            raise AttackError(f"{victim.ckpt_path} carries no adversary network (method {victim.method})")
        state, arch = victim.ckpt["adversary"], victim.ckpt["arch"]
        self.victim, self.eps = victim, victim.eps
        self.atla = arch["adversary"].startswith("atla_")
        self.director = arch["adversary"] in ("ppo_director_action", "atla_director_action")
        if self.atla:  # atla_ppo.py's adversary is a ppo.Actor (mean MLP + log-std)
            out_dim = victim.act_dim if self.director else victim.obs_dim
            self.policy = ppo.Actor(victim.obs_dim, out_dim, list(arch["adversary_hidden_sizes"]), -torch.ones(out_dim),
                                    torch.ones(out_dim)).to(victim.device)
            self.policy.load_state_dict(state)
            return
        # Both adversary kinds are an MLP trunk with a mean head (trunk.*, mean.* parameters); s~ = s + eps tanh(mean).
        hidden = list(arch.get("adversary_hidden_sizes", arch["hidden_sizes"]))
        activation = torch.nn.Tanh if arch.get("adversary_activation", "relu") == "tanh" else torch.nn.ReLU
        self.trunk = sac.mlp([victim.obs_dim, *hidden])
        for i, layer in enumerate(self.trunk):
            if isinstance(layer, torch.nn.ReLU):
                self.trunk[i] = activation()
        self.trunk.append(activation())
        self.mean = torch.nn.Linear(hidden[-1], victim.act_dim if self.director else victim.obs_dim)
        self.victim = victim
        self.trunk.load_state_dict({k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")})
        self.mean.load_state_dict({k[len("mean."):]: v for k, v in state.items() if k.startswith("mean.")})
        self.trunk.to(victim.device)
        self.mean.to(victim.device)

    def reset(self) -> None:
        pass

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.atla:
                mean = self.policy.mean(obs_n)
                out = mean if self.director else torch.nn.functional.hardtanh(mean)
            else:
                out = torch.tanh(self.mean(self.trunk(obs_n)))
        if self.director:
            return pa_perturb(self.victim, obs_n, out / (out.norm() + 1e-8))
        return obs_n + self.eps * out


def add_args(parser) -> None:
    pass


def evaluate(victim: Victim, args) -> dict:
    return {"stats": rollout(victim, OwnAdversaryAttacker(victim), args.episodes, args.seed, args.stochastic)}


if __name__ == "__main__":
    standalone(__doc__, add_args, evaluate, lambda args: NAME)
