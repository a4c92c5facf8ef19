"""Seconds per evaluation episode of the per-step attacks, episodes one at a time vs side by side
(attacks/common.py rollout_side_by_side), timed alternately in one run, with the mean returns of both (the same
episodes and settings; the random draws differ, so the means agree within their spread, not exactly).

    python benchmarks/attack_speed.py --ckpt tests/data/sac_halfcheetah_30k.pt --episodes 20
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks import common, eval_all, mad, natural, pgd, uniform  # noqa: E402


class OneAtATime:
    """The attacker, hidden from common.rollout's side-by-side path."""

    def __init__(self, attacker):
        self.attacker, self.name = attacker, attacker.name

    def reset(self) -> None:
        self.attacker.reset()

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        return self.attacker(obs_n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="tests/data/sac_halfcheetah_30k.pt")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--attacks", default="natural,uniform,mad,pgd")
    a = p.parse_args()
    modules = {"natural": natural, "uniform": uniform, "mad": mad, "pgd": pgd}
    unknown = [n for n in a.attacks.split(",") if n not in modules]
    if unknown or a.episodes < 1:
        p.error(f"--attacks from {', '.join(modules)} (got {unknown}), --episodes >= 1")
    torch.set_num_threads(1)
    try:
        args = eval_all.parse(eval_all.Args, "", ["--ckpt", a.ckpt, "--episodes", str(a.episodes)])
        victim = common.victim_from_args(a.ckpt, args)
    except common.AttackError as e:
        p.error(str(e))
    print(f"{a.ckpt}: {a.episodes} episodes, torch threads 1\n")
    print("| attack | one at a time: s/episode, mean return | side by side: s/episode, mean return | speed-up |")
    print("|---|---|---|---|")
    for name in a.attacks.split(","):
        attacker = None if name == "natural" else modules[name].attacker(victim, args)
        row = {}
        for mode in ("one at a time", "side by side"):
            wrapped = attacker
            if mode == "one at a time":
                wrapped = _Identity() if attacker is None else OneAtATime(attacker)
            start = time.perf_counter()
            stats = common.rollout(victim, wrapped, a.episodes, args.seed)
            row[mode] = ((time.perf_counter() - start) / a.episodes, stats.mean, stats.std)
        one, side = row["one at a time"], row["side by side"]
        print(f"| {name} | {one[0]:.2f}, {one[1]:.0f} ± {one[2]:.0f} | {side[0]:.2f}, {side[1]:.0f} ± {side[2]:.0f} | "
              f"{one[0] / side[0]:.1f}x |", flush=True)


class _Identity:
    """Natural episodes through the one-at-a-time path: s~ = s."""

    name = "natural"

    def reset(self) -> None:
        pass

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        return obs_n


if __name__ == "__main__":
    main()
