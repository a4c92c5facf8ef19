"""The 1M study's final models under the full attack suite, one column at a time, each committed as it lands, so a
stop loses at most the column in progress (a learned attacker or Sarsa critic that finished training is kept in
models/attackers/ and found again by the next run).

    python results/halfcheetah_1m/attack_final.py results/halfcheetah_1m/models/sac__HalfCheetah-v4__s1.pt --commit

Every model gets the same episodes and seed (20 from seed 0), the suite's current MAD/PGD defaults, the CPU presets
for RS (`--rs-grid quick`) and the learned attackers (`--search quick`), and learned attackers trained for
--attack-budget steps (200k by default; the paper trains them at the victim's 1M, 4 seeds).

At a stop, after the runs are terminated (a SIGTERM to this script reaches the eval_all it runs), `--commit-progress`
commits each attacker's training state in progress as `<attacker>.progress.pt` (attacks/rl.portable_progress: a
PPO attacker's whole, ≈ 150 kB, continued exactly; a SAC attacker's without its replay buffer, ≈ 3 MB, continued with
the buffer refilled from empty, which its record lists). The column that finishes an attacker deletes its state, and
commits the deletion.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import sweep  # noqa: E402  (its git_commit: retries a held index lock, unstages on failure)

COLUMNS = [["natural", "uniform", "mad", "pgd"], ["rs"], ["sa_rl_sac"], ["pa_ad_sac"], ["sa_rl_ppo"], ["pa_ad_ppo"]]
LEARNED = {"sa_rl_sac", "pa_ad_sac", "sa_rl_ppo", "pa_ad_ppo"}
SEED = 0


def read_row(stem: str) -> dict:
    try:
        with open(f"{stem}_attacks.json") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, OSError) as e:
        sys.exit(f"error: {stem}_attacks.json is unreadable ({e}); move it aside to start the row again")


def up_to_date(row: dict, group: list, episodes: int, budget: int) -> bool:
    """The row has these columns, from this run's episodes and seed and (learned attackers) budget."""
    if row.get("episodes") != episodes or row.get("seed") != SEED:
        return False
    columns = row.get("attacks", {})
    return all(c in columns and (c not in LEARNED or columns[c].get("settings", {}).get("budget") == budget)
               for c in group)


def pieces(stem: str) -> list[str]:
    """The row's files, its attackers and Sarsa critics (never a half-written *.tmp.<pid> nor an attacker's training
    state, *.partial.pt), and the portable copies of those states committed at a stop: the deletion of the ones
    the column finished (the others are unchanged)."""
    attackers, name = os.path.join(os.path.dirname(stem), "attackers"), os.path.basename(stem)
    found = [os.path.join(attackers, f) for f in sorted(os.listdir(attackers) if os.path.isdir(attackers) else [])
             if f.startswith(name + "_") and ".tmp." not in f and not f.endswith((".partial.pt", ".progress.pt"))]
    return [f"{stem}_attacks.{ext}" for ext in ("json", "md", "log")] + found + committed_progress(stem)


def committed_progress(stem: str) -> list[str]:
    """The row's attackers' portable training states in git (committed at a stop), present or deleted since."""
    attackers, name = os.path.join(os.path.dirname(stem), "attackers"), os.path.basename(stem)
    listed = subprocess.run(["git", "ls-files", "-z", "--", f"{name}_*.progress.pt"], cwd=attackers,
                            capture_output=True, text=True).stdout if os.path.isdir(attackers) else ""
    return [os.path.join(attackers, f) for f in listed.split("\0") if f]


def commit_progress(model: str, budget: int) -> None:
    """Each of the model's attackers in training at this budget: its state made portable (no replay buffer) and
    committed (an attacker of another budget would never be finished, nor its committed state deleted)."""
    from attacks.common import AttackError
    from attacks.rl import portable_progress

    stem = os.path.splitext(model)[0]
    attackers, name = os.path.join(os.path.dirname(stem), "attackers"), os.path.basename(stem)
    partials = [os.path.join(attackers, f) for f in sorted(os.listdir(attackers) if os.path.isdir(attackers) else [])
                if f.startswith(name + "_") and f.endswith(".partial.pt") and f"_b{budget}_" in f]
    states = []
    for partial in partials:
        try:
            portable_progress(partial, partial[:-len(".partial.pt")] + ".progress.pt")
            states.append(partial[:-len(".partial.pt")] + ".progress.pt")
        except AttackError as e:  # this attacker starts over on a fresh clone; the others are kept
            print(f"[attack_final] {e}: not committed", flush=True)
    study = os.path.basename(os.path.dirname(os.path.dirname(model)))
    if states and sweep.git_commit(states, f"study {study}: {name}'s attackers in training, their state at the stop"):
        print(f"[attack_final] committed {len(states)} training state(s) of {name}: {', '.join(states)}")


def run_column(cmd: list, log) -> int:
    """Run one column's eval_all; a SIGTERM or SIGINT to this script is passed on to it and waited for, so a stop
    never leaves an orphaned attacker training (its state is saved every 10k steps)."""
    child, stopped = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), []

    def stop(signum, _frame):  # no wait() here: the main thread's wait() holds Popen's lock
        stopped.append(signum)
        child.send_signal(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        returncode = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped:
        sys.exit(f"[attack_final] stopped by signal {stopped[0]} during {' '.join(cmd[4:6])}")
    return returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="slim models (models/<trial>.pt)")
    p.add_argument("--attack-budget", type=int, default=200_000, help="environment steps per learned attacker")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes (every model of the study: 20)")
    p.add_argument("--commit", action="store_true", help="git-commit each column's row, log and attackers")
    p.add_argument("--columns", default=None,
                   help="comma-separated attacks: run only the columns made of these (e.g. natural,uniform,mad,pgd,rs "
                        "to leave the learned attackers for a session long enough to finish them); default all")
    p.add_argument("--commit-progress", action="store_true",
                   help="at a stop: git-commit the attackers' training states in progress (portable), then exit")
    a = p.parse_args()
    models = [os.path.abspath(m) for m in a.models]
    for model in models:
        if not os.path.isfile(model):
            sys.exit(f"error: {model} not found")
    if a.attack_budget <= 0 or a.episodes <= 0:
        sys.exit("error: --attack-budget and --episodes must be positive")
    known = {c for group in COLUMNS for c in group} | {"valt_soft_adv"}
    chosen = known if a.columns is None else {c.strip() for c in a.columns.split(",") if c.strip()}
    if not chosen or chosen - known:
        sys.exit(f"error: --columns takes some of {','.join(sorted(known))} (got {a.columns!r})")
    if a.commit_progress:
        for model in models:
            commit_progress(model, a.attack_budget)
        return
    import torch

    for model in models:
        stem, name = os.path.splitext(model)[0], os.path.basename(os.path.splitext(model)[0])
        study = os.path.basename(os.path.dirname(os.path.dirname(model)))
        try:
            method = torch.load(model, map_location="cpu", weights_only=True)["method"]
        except Exception as e:  # not a checkpoint of this project
            sys.exit(f"error: {model} is not a checkpoint of this project ({type(e).__name__})")
        for group in COLUMNS + ([["valt_soft_adv"]] if method == "valt_soft" else []):  # the checkpoint's name
            if not set(group) <= chosen:
                continue
            row = read_row(stem)
            if not up_to_date(row, group, a.episodes, a.attack_budget):
                cmd = [sys.executable, os.path.join(ROOT, "attacks", "eval_all.py"), "--ckpt", model, "--attacks",
                       ",".join(group), "--episodes", str(a.episodes), "--seed", str(SEED), "--search", "quick",
                       "--rs-grid", "quick", "--attack-budget", str(a.attack_budget)] + (["--update"] if row else [])
                print(f"[attack_final] {name}: {','.join(group)}", flush=True)
                with open(f"{stem}_attacks.log", "a") as log:
                    log.write(f"$ {' '.join(cmd[1:])}\n")
                    log.flush()
                    if run_column(cmd, log):
                        sys.exit(f"error: {','.join(group)} on {model} failed (end of {stem}_attacks.log)")
                row = read_row(stem)
            values = ", ".join(f"{row['attacks'][c]['column']} {row['attacks'][c].get('mean', float('nan')):.0f}"
                               for c in group)
            worst = row.get("worst") or {}
            print(f"[attack_final]   {values}; worst so far {worst.get('attack')} {worst.get('mean', float('nan')):.0f}",
                  flush=True)
            if a.commit:  # also a column finished by a run stopped before its commit
                paths = pieces(stem)  # with any committed training state the column finished (its deletion)
                sweep.git_commit(paths, f"study {study}: {name} attacked ({values})", force=tuple(paths))


if __name__ == "__main__":
    main()
