"""Are a victim's low clean episodes tumbles? Per episode of the deterministic policy: its return and the steps the
torso spends past vertical (cos of the planar root pitch < 0: on its back), with the first such step.

    python benchmarks/upside_down.py --ckpt results/halfcheetah_1m/models/checkpoints/sac__HalfCheetah-v4__s1_step800000.pt

The planar tasks (HalfCheetah, Hopper, Walker2d) have the pitch as qpos[2] (their "rooty" joint); others are refused.
Episodes are seeded seed, seed + 1, ... one after another (attacks/natural.py runs them side by side, with other
starting states, so the returns differ from an attack row's).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from attacks.common import AttackError, load_victim  # noqa: E402

PLANAR = ("HalfCheetah", "Hopper", "Walker2d")


def episodes(ckpt: str, count: int, seed: int) -> list[dict]:
    victim = load_victim(ckpt)
    env = victim.make_env()
    if not env.spec.id.startswith(PLANAR):
        raise AttackError(f"{env.spec.id}: the pitch is read from a planar task's root joint ({', '.join(PLANAR)})")
    rows = []
    for episode in range(count):
        (obs, _), done, total, steps, first = env.reset(seed=seed + episode), False, 0.0, 0, None
        while not done:
            with torch.no_grad():
                action = victim.act(victim.normalize(obs).unsqueeze(0))[0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
            if np.cos(env.unwrapped.data.qpos[2]) < 0:
                steps, first = steps + 1, first or env.get_wrapper_attr("_elapsed_steps")
        rows.append({"return": total, "upside_down_steps": steps, "first": first})
    env.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    try:
        rows = episodes(a.ckpt, a.episodes, a.seed)
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
