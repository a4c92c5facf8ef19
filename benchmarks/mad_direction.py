"""Where does MAD move a victim's action, with the references' settings and with today's defaults?

On the first --states states each victim's deterministic policy visits (seeded), MAD's perturbation is computed with
the references' settings (10 steps of eps/10, one start) and with the defaults (attacks/mad.py); for each, per
action dimension (means over the states): the victim's std sigma, that dimension's share of each state's MAD
objective sum(((m(s~) - m(s)) / sigma)^2), and |m(s~) - m(s)|; and the mean change of the executed action (actor.deterministic: the mean
clipped to the action bounds, tanh-squashed for SAC kinds).
It asks whether a more converged MAD pushes the mean along the smallest-sigma dimension (it would if the share of
that dimension grew) or moves the action more everywhere.

    python benchmarks/mad_direction.py --ckpts results/hopper_ppo_2m/models/ppo__Hopper-v4__s1.pt ...
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from attacks import mad  # noqa: E402
from attacks.common import AttackError, load_victim, visited_states  # noqa: E402
from benchmarks.attack_convergence import NEW, OLD  # noqa: E402


def measure(victim, states: torch.Tensor, settings: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    perturbed = mad.MADAttacker(victim, **settings)(states)
    with torch.no_grad():
        clean, log_std = victim.actor(states)
        moved = victim.actor(perturbed)[0] - clean
        per_dim = (moved / log_std.exp()) ** 2
        executed = victim.actor.deterministic(perturbed) - victim.actor.deterministic(states)
    return {"objective": per_dim.sum(1).mean().item(),
            "share": (per_dim / per_dim.sum(1, keepdim=True).clamp_min(1e-30)).mean(0).tolist(),
            "mean_shift": moved.abs().mean(0).tolist(), "executed_change": executed.abs().mean().item(),
            "sigma": log_std.exp().mean(0).tolist()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True)
    p.add_argument("--states", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.states < 1:
        p.error("--states must be >= 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report(a)
    finally:
        torch.set_num_threads(threads)


def report(a) -> None:
    fmt = lambda values: " ".join(f"{v:.3f}" for v in values)  # noqa: E731
    print("| victim | settings | σ per dim | MAD objective | share of it per dim | mean |Δm| per dim | executed change |")
    print("|---|---|---|---|---|---|---|")
    for path in a.ckpts:
        try:
            victim = load_victim(path)
        except (AttackError, OSError) as e:
            sys.exit(f"mad_direction: {e}")
        states = visited_states(victim, a.states, a.seed)
        for label, settings in (("references'", OLD["mad"]), ("defaults", NEW["mad"])):
            r = measure(victim, states, settings, a.seed)
            print(f"| {path} | {label} | {fmt(r['sigma'])} | {r['objective']:.3f} | {fmt(r['share'])} "
                  f"| {fmt(r['mean_shift'])} | {r['executed_change']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
