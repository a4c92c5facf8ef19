"""The 1M study's final models under the full attack suite, one column at a time, each committed as it lands, so a
stop loses at most the column in progress (a learned attacker or Sarsa critic that finished training is kept in
models/attackers/ and found again by the next run).

    python results/halfcheetah_1m/attack_final.py results/halfcheetah_1m/models/sac__HalfCheetah-v4__s1.pt --commit

Every model gets the same episodes and seed (20 from seed 0), the suite's current MAD/PGD defaults, the CPU presets
for RS (`--rs-grid quick`) and the learned attackers (`--search quick`), and learned attackers trained for
--attack-budget steps (200k by default; the paper trains them at the victim's 1M, 4 seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLUMNS = [["natural", "uniform", "mad", "pgd"], ["rs"], ["sa_rl_sac"], ["pa_ad_sac"], ["sa_rl_ppo"], ["pa_ad_ppo"]]


def done_columns(stem: str) -> set:
    try:
        with open(f"{stem}_attacks.json") as f:
            return set(json.load(f)["attacks"])
    except FileNotFoundError:
        return set()


def git(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="slim models (models/<trial>.pt)")
    p.add_argument("--attack-budget", type=int, default=200_000, help="environment steps per learned attacker")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes (every model of the study: 20)")
    p.add_argument("--commit", action="store_true", help="git-commit each column's row, log and attackers")
    a = p.parse_args()
    for model in a.models:
        if not os.path.isfile(model):
            sys.exit(f"error: {model} not found")
    import torch

    for model in a.models:
        stem = os.path.splitext(model)[0]
        columns = COLUMNS + ([["valt_soft_adv"]] if torch.load(model, map_location="cpu", weights_only=True)["method"]
                             == "sac_valt_soft" else [])
        for group in columns:
            if set(group) <= done_columns(stem):
                continue
            update = ["--update"] if done_columns(stem) else []
            cmd = [sys.executable, os.path.join(ROOT, "attacks", "eval_all.py"), "--ckpt", model, "--attacks",
                   ",".join(group), "--episodes", str(a.episodes), "--seed", "0", "--search", "quick", "--rs-grid", "quick",
                   "--attack-budget", str(a.attack_budget), *update]
            print(f"[attack_final] {os.path.basename(model)}: {','.join(group)}", flush=True)
            with open(f"{stem}_attacks.log", "a") as log:
                log.write(f"$ {' '.join(cmd[1:])}\n")
                log.flush()
                if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode:
                    sys.exit(f"error: {','.join(group)} on {model} failed (end of {stem}_attacks.log)")
            with open(f"{stem}_attacks.json") as f:
                row = json.load(f)
            values = ", ".join(f"{row['attacks'][c]['column']} {row['attacks'][c]['mean']:.0f}" for c in group)
            worst = row.get("worst") or {}
            print(f"[attack_final]   {values}; worst so far {worst.get('attack')} {worst.get('mean', float('nan')):.0f}",
                  flush=True)
            if a.commit:
                name = os.path.basename(stem)
                attackers = os.path.join(os.path.dirname(model), "attackers")
                paths = [f"{stem}_attacks.{ext}" for ext in ("json", "md", "log")]
                paths += [os.path.join(attackers, f) for f in sorted(os.listdir(attackers))
                          if f.startswith(name + "_")] if os.path.isdir(attackers) else []
                git("add", "-f", *paths)
                study = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(model))))
                done = git("commit", "-q", "-m", f"study {study}: {name} attacked ({values})", "--", *paths)
                if done.returncode:
                    print(f"[attack_final]   commit failed: {done.stderr.strip()[:200]}", flush=True)


if __name__ == "__main__":
    main()
