"""Are a victim's low episodes tumbles? Per episode of the deterministic policy, clean or under the attack suite's
PGD (minQ): its return and the steps the torso spends past vertical (cos of the planar root pitch < 0: on its back),
with the first such step.

    python benchmarks/upside_down.py --ckpt results/halfcheetah_1m/models/checkpoints/sac__HalfCheetah-v4__s1_step800000.pt
    python benchmarks/upside_down.py --ckpt <slim> --attack pgd    # the suite's PGD at its defaults

The planar tasks (HalfCheetah, Hopper, Walker2d) have the pitch as qpos[2] (their "rooty" joint); others are refused.
Both run through the suite's own loop (attacks.common.rollout), seeded seed, seed + 1, ...: clean episodes one
after another (attacks/natural.py runs them side by side, a batch whose arithmetic rounds differently, so the
returns differ from a natural row's); PGD episodes side by side, as attacks/pgd.py runs them: its returns are the
PGD row's.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from attacks import pgd  # noqa: E402
from attacks.common import AttackError, load_victim, rollout  # noqa: E402

PLANAR = ("HalfCheetah", "Hopper", "Walker2d")


class Unperturbed:
    """A non-batched attacker that changes nothing: the suite's one-episode-at-a-time loop for clean episodes."""

    name, batched = "natural", False

    def reset(self) -> None:
        pass

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        return obs_n


def episodes(ckpt: str, count: int, seed: int, attack: str = "none") -> list[dict]:
    victim = load_victim(ckpt)
    if not victim.env_id.startswith(PLANAR):
        raise AttackError(f"{victim.env_id}: the pitch is read from a planar task's root joint ({', '.join(PLANAR)})")
    attacker = pgd.attacker(victim, pgd.Args()) if attack == "pgd" else Unperturbed()
    steps, upside, first = [0] * count, [0] * count, [None] * count

    def record(i: int, env) -> None:
        steps[i] += 1
        if np.cos(env.unwrapped.data.qpos[2]) < 0:
            upside[i] += 1
            first[i] = first[i] or steps[i]

    stats = rollout(victim, attacker, count, seed, on_step=record)
    return [{"return": r, "upside_down_steps": u, "first": f} for r, u, f in zip(stats.returns, upside, first)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attack", choices=("none", "pgd"), default="none",
                   help="none: clean episodes; pgd: under the suite's PGD (minQ) at its defaults")
    a = p.parse_args()
    try:
        rows = episodes(a.ckpt, a.episodes, a.seed, a.attack)
    except AttackError as e:
        sys.exit(f"error: {e}")
    print("| episode | return | steps upside down | first |\n|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| {a.seed + i} | {r['return']:.0f} | {r['upside_down_steps']} | {r['first'] or '–'} |")
    for label, group in (("upside down at some step", [r for r in rows if r["upside_down_steps"]]),
                         ("never upside down", [r for r in rows if not r["upside_down_steps"]])):
        if group:
            print(f"{label}: {len(group)} episodes, return {np.mean([r['return'] for r in group]):.0f} "
                  f"(min {min(r['return'] for r in group):.0f}, max {max(r['return'] for r in group):.0f})")


if __name__ == "__main__":
    main()
