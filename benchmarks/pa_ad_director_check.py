"""What has a trained PA-AD director learned? Evaluate a saved director against its victim next to controls that
use the same realisation (attacks/pa_ad.py): the director's own directions, their negation, the director's mean
direction held constant, and random unit directions.

    python benchmarks/pa_ad_director_check.py --ckpt results/hopper_ppo_2m/attacks/ppo__Hopper-v4__s1.pt \
        --attacker results/hopper_ppo_2m/attacks/attackers/ppo__Hopper-v4__s1_pa_ad_sac_h256x256_ls5000_b30000_s1000_eps0.075_pa10x5.pt

A director trained with reward -r should do worse for the victim than its own negation and than random directions.
If the negation is the stronger attack, the director learned the opposite of what would hurt the victim. The
per-step reward (return / length) separates a director that lowers the immediate reward from one that ends
episodes early: on a task with termination the two can pull in opposite directions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from attacks import pa_ad, rl  # noqa: E402
from attacks.common import AttackError, load_victim, rollout, visited_states  # noqa: E402


class DirectionAttacker:
    """The PA-AD realisation of direction_fn(obs_n) (a vector in the victim's action space)."""

    def __init__(self, name: str, direction_fn, realize):
        self.name, self.direction_fn, self.realize = name, direction_fn, realize

    def reset(self) -> None:
        pass

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        return self.realize(obs_n, self.direction_fn(obs_n))



def check(ckpt: str, attacker_path: str, episodes: int = 3, seed: int = 100, pa_steps: int = 10,
          pa_restarts: int = 5, pa_step_scale: float = 1.0, pa_final_step_scale: float = 1.0) -> dict:
    if episodes < 1 or pa_steps < 1 or pa_restarts < 1:
        raise AttackError("--episodes, --pa-steps and --pa-restarts must be >= 1")
    victim = load_victim(ckpt)
    policy, meta = rl.load_attacker(attacker_path, victim, "pa_ad")
    realize = pa_ad.realizer(victim, pa_steps, pa_restarts, step_scale=pa_step_scale,
                             final_step_scale=pa_final_step_scale)
    director = rl.policy_action_fn(policy)
    with torch.no_grad():
        directions = director(visited_states(victim, 1000, seed))
    unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    mean_direction = unit.mean(0) / unit.mean(0).norm().clamp_min(1e-8)
    generator = torch.Generator().manual_seed(seed)

    def random_direction(obs_n):
        return torch.randn(victim.act_dim, generator=generator).to(obs_n.device)

    def own(obs_n):
        with torch.no_grad():
            return director(obs_n.unsqueeze(0))[0]

    arms = {"natural": None, "director": DirectionAttacker("director", own, realize),
            "negated director": DirectionAttacker("negated", lambda o: -own(o), realize),
            "constant mean direction": DirectionAttacker("constant", lambda o: mean_direction, realize),
            "random directions": DirectionAttacker("random", random_direction, realize)}
    rows = {}
    for name, attacker in arms.items():
        stats = rollout(victim, attacker, episodes, seed)
        rows[name] = {"mean": stats.mean, "std": stats.std, "mean_length": float(np.mean(stats.lengths)),
                      "reward_per_step": float(np.sum(stats.returns) / np.sum(stats.lengths))}
        print(f"  {name:24s} return {stats.mean:8.1f} ± {stats.std:6.1f} | length {rows[name]['mean_length']:6.1f} | "
              f"reward/step {rows[name]['reward_per_step']:.3f}", flush=True)
    return {"ckpt": ckpt, "attacker": attacker_path, "director_algo": meta.get("algo"), "episodes": episodes,
            "seed": seed, "pa_steps": pa_steps, "pa_restarts": pa_restarts, "pa_step_scale": pa_step_scale,
            "pa_final_step_scale": pa_final_step_scale,
            "director_saturation": float((directions.abs() > 0.99).float().mean()),
            "director_mean_cos_to_mean_direction": float((unit @ mean_direction).mean()), "arms": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="the victim's checkpoint")
    p.add_argument("--attacker", required=True, help="a saved PA-AD director (attacks/pa_ad.py --save-dir)")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=100, help="first evaluation episode's environment seed")
    # the realisation the director was trained with (its file name's _pa<steps>x<restarts>[s<first>-<last>]); the
    # defaults are the one the committed directors of results/hopper_ppo_2m trained with
    p.add_argument("--pa-steps", type=int, default=10)
    p.add_argument("--pa-restarts", type=int, default=5)
    p.add_argument("--pa-step-scale", type=float, default=1.0)
    p.add_argument("--pa-final-step-scale", type=float, default=1.0)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    try:
        row = check(a.ckpt, a.attacker, a.episodes, a.seed, a.pa_steps, a.pa_restarts, a.pa_step_scale,
                    a.pa_final_step_scale)
    except AttackError as e:
        p.exit(2, f"error: {e}\n")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
