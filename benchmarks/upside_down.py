"""Are a victim's low episodes tumbles? Per episode of the deterministic policy, clean or under the attack suite's
PGD (minQ): its return and the steps the torso spends past vertical (cos of the planar root pitch < 0: on its back),
with the first such step.

    python benchmarks/upside_down.py --ckpt results/halfcheetah_1m/models/checkpoints/sac__HalfCheetah-v4__s1_step800000.pt
    python benchmarks/upside_down.py --ckpt <slim> --attack pgd    # the suite's PGD at its defaults
    python benchmarks/upside_down.py --ckpt <slim> --attack rs     # the RS column's strongest critic (its row)

The planar tasks (HalfCheetah, Hopper, Walker2d) have the pitch as qpos[2] (their "rooty" joint); others are refused.
Both run through the suite's own loop (attacks.common.rollout), seeded seed, seed + 1, ...: clean episodes one
after another (attacks/natural.py runs them side by side, a batch whose arithmetic rounds differently, so the
returns differ from a natural row's); PGD episodes side by side, as attacks/pgd.py runs them: its returns are the
PGD row's. RS replays the strongest Sarsa critic that `<ckpt stem>_attacks.json`'s RS column names, from its cache,
side by side like the column (its returns are the column's when the row used these episodes and seed).
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
from attacks import pgd, robust_sarsa  # noqa: E402
from attacks.common import AttackError, Victim, load_victim, rollout  # noqa: E402

PLANAR = ("HalfCheetah", "Hopper", "Walker2d")


class Unperturbed:
    """A non-batched attacker that changes nothing: the suite's one-episode-at-a-time loop for clean episodes."""

    name, batched = "natural", False

    def reset(self) -> None:
        pass

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        return obs_n


def rs_row(ckpt: str) -> dict:
    """The checkpoint's attack row, which must hold an RS column."""
    row_path = f"{os.path.splitext(ckpt)[0]}_attacks.json"
    try:
        row = json.load(open(row_path))
        row["attacks"]["rs"]["strongest"], row["attacks"]["rs"]["search"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AttackError(f"--attack rs replays the RS column of {row_path}: none readable ({type(e).__name__}: {e})")
    return row


def strongest_rs(victim: Victim, row: dict, rs_flags: tuple[str, ...] = ()):
    """The attacker of the row's RS column: its strongest critic, read from the cache under the Sarsa settings
    `rs_flags` (eval_all's flags; its defaults when empty), which must be those the row recorded."""
    from attacks import eval_all
    from attacks.common import adapt, victim_identity

    if row.get("victim_sha1") not in (None, victim_identity(victim)["victim_sha1"]):
        raise AttackError(f"{victim.ckpt_path}: its attack row was made on another model")
    args = eval_all.parse(eval_all.Args, "", ["--ckpt", victim.ckpt_path, "--seed", str(row.get("seed", 0)), *rs_flags])
    adapt("rs", victim, args)
    fitted = row["attacks"]["rs"]["search"]
    ours = robust_sarsa.settings_record(victim, args, [])
    other = {k: {"row": fitted[k], "here": v} for k, v in ours.items()
             if k in fitted and k not in ("grid", "settings") and fitted[k] != v}  # older rows record fewer
    if other:
        raise AttackError(f"the row's RS column ran with other settings (pass its flags with --rs-flags): {other}")
    return robust_sarsa.Replay(victim, args, row["attacks"]["rs"]["strongest"]).attacker


def episodes(ckpt: str, count: int, seed: int, attack: str = "none", rs_flags: tuple[str, ...] = ()) -> list[dict]:
    if not os.path.isfile(ckpt):
        raise AttackError(f"{ckpt}: no such checkpoint")
    row = rs_row(ckpt) if attack == "rs" else {}
    victim = load_victim(ckpt, eps=row.get("eps"))  # RS: at the row's radius
    if not victim.env_id.startswith(PLANAR):
        raise AttackError(f"{victim.env_id}: the pitch is read from a planar task's root joint ({', '.join(PLANAR)})")
    if row.get("stochastic"):
        raise AttackError("the row's RS column ran the stochastic policy; this benchmark runs the deterministic one")
    attacker = {"pgd": lambda: pgd.attacker(victim, pgd.Args()), "rs": lambda: strongest_rs(victim, row, rs_flags),
                "none": Unperturbed}[attack]()
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
    p.add_argument("--attack", choices=("none", "pgd", "rs"), default="none",
                   help="none: clean episodes; pgd: under the suite's PGD (minQ) at its defaults; rs: the strongest "
                        "critic of the checkpoint's RS column")
    p.add_argument("--rs-flags", default="", help="--attack rs: the Sarsa flags eval_all ran the row's RS column "
                   "with, if not its defaults (e.g. \"--rs-hidden 64 64 --pgd-restarts 2\")")
    a = p.parse_args()
    try:
        rows = episodes(a.ckpt, a.episodes, a.seed, a.attack, tuple(a.rs_flags.split()))
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
