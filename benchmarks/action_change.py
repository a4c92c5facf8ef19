"""How far can PGD (minQ) move a victim's action, on the states it visits clean and on those it visits attacked?

Per model, two runs of the same episodes through the suite's loop (attacks.common.rollout, side by side, seeds
seed, seed + 1, ...), each computing the suite's PGD perturbation s~ at every step and recording the squared change
of the deterministic action |mu(s~) - mu(s)|^2:
- clean path: the victim is shown the true observation (the perturbation is measured, not applied): its returns
  are the natural row's;
- attacked path: the victim is shown s~: its returns are the PGD row's.
A policy made smooth on the states its training data covers but not on those an attacked agent reaches shows a
larger change on the attacked path.

    python benchmarks/action_change.py --ckpts results/halfcheetah_1m/models/checkpoints/sac_valt_eps__HalfCheetah-v4__s1_step800000.pt \
        --episodes 5 --out results/halfcheetah_1m/action_change.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from attacks import pgd  # noqa: E402
from attacks.common import AttackError, kept_rows, load_victim, rollout, write_rows  # noqa: E402


class MeasuredPGD:
    """The suite's PGD attacker, recording the squared action change it causes; `apply` False passes the true
    observation on (the clean path)."""

    batched = True

    def __init__(self, victim, settings: pgd.Args, apply: bool):
        self.victim, self.attack, self.apply = victim, pgd.attacker(victim, settings), apply
        self.name = "pgd" if apply else "clean (pgd measured)"
        self.changes: list[torch.Tensor] = []

    def reset(self) -> None:
        self.attack.reset()

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        obs_tilde = self.attack(obs_n)
        with torch.no_grad():
            act = self.victim.actor.deterministic
            self.changes.append((act(obs_tilde) - act(obs_n)).pow(2).sum(-1))
        return obs_tilde if self.apply else obs_n


def summary(changes: torch.Tensor) -> dict:
    q = torch.quantile(changes, torch.tensor([0.5, 0.9])).tolist()
    return {"mean": changes.mean().item(), "median": q[0], "p90": q[1], "steps": len(changes)}


def measure(ckpt: str, episodes: int, seed: int, settings: pgd.Args) -> dict:
    victim = load_victim(ckpt)
    row = {"ckpt": os.path.relpath(os.path.abspath(ckpt), ROOT), "method": victim.method,
           "global_step": victim.ckpt.get("global_step")}
    for path, apply in (("clean_path", False), ("attacked_path", True)):
        attacker = MeasuredPGD(victim, settings, apply)
        stats = rollout(victim, attacker, episodes, seed)
        row[path] = {"returns": stats.returns, "squared_action_change": summary(torch.cat(attacker.changes))}
    row["ratio_of_means"] = row["attacked_path"]["squared_action_change"]["mean"] / max(
        row["clean_path"]["squared_action_change"]["mean"], 1e-12)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pgd-restarts", type=int, default=pgd.RESTARTS, help="the suite's PGD otherwise at its defaults")
    p.add_argument("--out", help="JSON to write (rows of other checkpoints already there are kept)")
    a = p.parse_args()
    if a.episodes < 1:
        sys.exit(f"error: --episodes must be >= 1, got {a.episodes}")
    settings = pgd.Args(pgd_restarts=a.pgd_restarts)
    settings_record = {"episodes": a.episodes, "seed": a.seed, "pgd": vars(settings)}
    try:
        kept_rows(a.out, settings_record)  # checked before the runs, not after
        rows = [measure(c, a.episodes, a.seed, settings) for c in a.ckpts]
    except AttackError as e:
        sys.exit(f"error: {e}")
    print("| model | clean path: mean / median / p90 | attacked path: mean / median / p90 | ratio of means | "
          "returns clean → attacked |\n|---|---|---|---|---|")
    for r in rows:
        c, t = (r[k]["squared_action_change"] for k in ("clean_path", "attacked_path"))
        print(f"| {os.path.basename(r['ckpt'])} | {c['mean']:.4f} / {c['median']:.4f} / {c['p90']:.4f} | "
              f"{t['mean']:.4f} / {t['median']:.4f} / {t['p90']:.4f} | {r['ratio_of_means']:.1f} | "
              f"{statistics.fmean(r['clean_path']['returns']):.0f} → {statistics.fmean(r['attacked_path']['returns']):.0f} |")
    if a.out:
        try:
            write_rows(a.out, settings_record, rows)
        except AttackError as e:  # the file changed while these ran
            sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
