"""One slim model's row in a branch comparison table (one torch thread), each piece skipped when its file already
holds it, so a stopped run continues; the attacks run 20 episodes from seed 0:

- the suite's natural, uniform, MAD and PGD (minQ) at its defaults: <model stem>_attacks.json/.md/.log beside it;
- MAD and PGD at the references' settings (SA-PPO `apply_attack`, SA-DDPG `attack_critic`: 10 steps of ε/10; MAD
  one start, PGD 5 restarts alternating step box and whole ball; see ../reference_settings/): <branch>/pgd_references/;
- PGD as the training's search (2 steps of ε/2 after a start in the step box, 1 restart): <branch>/pgd_two_steps/;
- PGD with 4 steps of ε/2, 1 restart: <branch>/pgd_four_steps/;
- benchmarks/critic_check.py under the 2-step search, 2 episodes (its default seed): <branch>/critic_check.json;
- benchmarks/action_change.py, 5 episodes: the study's action_change.json.

    python results/halfcheetah_1m/branch_readings.py \
        results/halfcheetah_1m/branch_behaviour_mixture/models/checkpoints/sac_valt_eps__HalfCheetah-v4__s1_step750000.pt

The branch folder is the one above models/checkpoints/ (the main line's readings are in ../reference_settings/ and
../critic_check_training_search.json). Each piece's log is kept: the suite's beside the model, each PGD strength's
in its folder, critic_check's and action_change's in <branch>/logs/. Slim models between the sweep's --slim-every
ones come from `sweep.py --slim-at`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

STUDY = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(STUDY))
EPISODES = 20
# the flags of each PGD strength; the folder each one's JSON, Markdown and log go to
STRENGTHS = {
    "pgd_references": ["--attacks", "natural,mad,pgd", "--mad-step-scale", "1", "--mad-restarts", "1",
                       "--pgd-step-scale", "1", "--pgd-restarts", "5"],
    "pgd_two_steps": ["--attacks", "pgd", "--pgd-steps", "2", "--pgd-step-scale", "1", "--pgd-restarts", "1",
                      "--pgd-start", "step"],
    "pgd_four_steps": ["--attacks", "pgd", "--pgd-steps", "4", "--pgd-step-scale", "2", "--pgd-restarts", "1",
                       "--pgd-start", "step"],
}
TRAINING_SEARCH = ["--pgd-steps", "2", "--pgd-step-scale", "1", "--pgd-restarts", "1", "--pgd-start", "step"]


def run(cmd: list, log: str) -> None:
    print(f"[readings] {' '.join(os.path.relpath(c, ROOT) if os.path.isabs(c) else c for c in cmd[1:4])} ...",
          flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd[1:3])} failed (exit {proc.returncode}); its log: {log}")


def has_row(path: str, ckpt: str) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return any(os.path.abspath(os.path.join(ROOT, r["ckpt"])) == ckpt for r in json.load(f)["rows"])


def has_columns(path: str, columns: str) -> bool:
    """The attack JSON is complete (the copy writes it last) and holds these columns from this protocol."""
    try:
        with open(path) as f:
            row = json.load(f)
    except (OSError, ValueError):
        return False
    return (row.get("episodes"), row.get("seed")) == (EPISODES, 0) and all(
        c in row.get("attacks", {}) for c in columns.split(","))


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    model = os.path.abspath(sys.argv[1])
    checkpoints = os.path.dirname(model)
    if not os.path.isfile(model):
        sys.exit(f"error: {model} not found")
    branch, stem = os.path.dirname(os.path.dirname(checkpoints)), os.path.splitext(os.path.basename(model))[0]
    if os.path.basename(checkpoints) != "checkpoints" or os.path.dirname(branch) != STUDY:
        sys.exit(f"error: {model} is not in a branch's models/checkpoints/ folder (results/halfcheetah_1m/<branch>/)")
    eval_all = [sys.executable, os.path.join(ROOT, "attacks", "eval_all.py")]
    common = ["--episodes", str(EPISODES), "--seed", "0"]
    suite = "natural,uniform,mad,pgd"
    if not has_columns(os.path.join(checkpoints, f"{stem}_attacks.json"), suite):
        run(eval_all + ["--ckpt", model, "--attacks", suite] + common, os.path.join(checkpoints, f"{stem}_attacks.log"))
    for folder, flags in STRENGTHS.items():
        dst = os.path.join(branch, folder)
        if has_columns(os.path.join(dst, f"{stem}_attacks.json"), flags[1]):
            continue
        os.makedirs(dst, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:  # eval_all writes beside the checkpoint: a copy, then the files
            shutil.copyfile(model, os.path.join(tmp, f"{stem}.pt"))
            run(eval_all + ["--ckpt", os.path.join(tmp, f"{stem}.pt")] + flags + common,
                os.path.join(dst, f"{stem}_attacks.log"))
            for ext in ("md", "json"):  # the JSON last: present means complete
                shutil.copyfile(os.path.join(tmp, f"{stem}_attacks.{ext}"), os.path.join(dst, f"{stem}_attacks.{ext}"))
    logs = os.path.join(branch, "logs")
    os.makedirs(logs, exist_ok=True)
    critic = os.path.join(branch, "critic_check.json")
    if not has_row(critic, model):
        run([sys.executable, os.path.join(ROOT, "benchmarks", "critic_check.py"), "--ckpts", model, "--episodes", "2",
             *TRAINING_SEARCH, "--out", critic], os.path.join(logs, f"{stem}_critic_check.log"))
    change = os.path.join(STUDY, "action_change.json")
    if not has_row(change, model):
        run([sys.executable, os.path.join(ROOT, "benchmarks", "action_change.py"), "--ckpts",
             os.path.relpath(model, ROOT), "--episodes", "5", "--out", change],
            os.path.join(logs, f"{stem}_action_change.log"))
    print(f"[readings] {os.path.relpath(model, ROOT)}: done", flush=True)


if __name__ == "__main__":
    main()
