"""Train every method on one task with the same seed and budget, then attack each checkpoint with the
cheap attacks (natural, uniform, MAD, PGD-minQ; add learned ones with --attacks) and print one table:
clean and attacked returns, environment steps (agent + adversary) and whole-run steps/s.

Per-task schedules (k_w ramp, regulariser ramp, SAC-PPO adversary iterations) are the paper's, scaled by
budget / paper budget, so a 50k-step run has the same shape as the 1M-step one.

    python benchmarks/robustness.py --env HalfCheetah-v4 --steps 50000 --jobs 2
    python benchmarks/robustness.py --env HalfCheetah-v4 --steps 50000 --only-report   # re-tabulate
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import robust_sac  # noqa: E402
import sac  # noqa: E402
import sac_ppo  # noqa: E402
import sac_valt_eps  # noqa: E402
import sac_valt_soft  # noqa: E402

METHODS = ["sac", "robust_sac", "sac_valt_eps", "sac_valt_soft", "sac_ppo"]


def scaled_overrides(method: str, env_id: str, steps: int) -> list[str]:
    """The paper's per-task step schedules (sweep.SCHEDULES), scaled to this budget."""
    import sweep

    task = sac.task_name(env_id)
    scale = steps / sac.TASK_DEFAULTS[task]["total_timesteps"]
    defaults = {"robust_sac": robust_sac, "sac_valt_eps": sac_valt_eps, "sac_valt_soft": sac_valt_soft,
                "sac_ppo": sac_ppo}.get(method, sac).TASK_DEFAULTS[task]
    return [x for flag in sweep.SCHEDULES.get(method, ())
            for x in (f"--{flag.replace('_', '-')}", str(max(1, int(round(defaults[flag] * scale)))))]


def run_name(method: str, env_id: str, seed: int, steps: int) -> str:
    return f"bench_{method}_{env_id}_{seed}_{steps}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v4")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--attacks", default="natural,uniform,mad,pgd")
    p.add_argument("--extra-attack-args", default="", help="passed to attacks/eval_all.py")
    p.add_argument("--only-report", action="store_true")
    a = p.parse_args()
    os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)

    if not a.only_report:
        pending, active = [], []
        for m in a.methods:
            name = run_name(m, a.env, a.seed, a.steps)
            if os.path.isfile(os.path.join(ROOT, "runs", name, "model.pt")):
                print(f"exists, skipped: runs/{name}", flush=True)
                continue
            cmd = [sys.executable, os.path.join(ROOT, f"{m}.py"), "--env-id", a.env, "--total-timesteps", str(a.steps),
                   "--seed", str(a.seed), "--run-name", name, "--eval-every", str(max(a.steps // 10, 1000)),
                   "--threads", "1", *scaled_overrides(m, a.env, a.steps)]
            pending.append((m, name, cmd))
        while pending or active:
            while pending and len(active) < a.jobs:
                m, name, cmd = pending.pop(0)
                print("running:", " ".join(cmd[1:]), flush=True)
                log = open(os.path.join(ROOT, "runs", f"{name}.log"), "w")
                active.append((subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), time.time(), m))
            time.sleep(5)
            for item in list(active):
                if item[0].poll() is not None:
                    active.remove(item)
                    print(f"finished {item[2]} rc={item[0].returncode} in {time.time() - item[1]:.0f}s", flush=True)
        ckpts = [os.path.join(ROOT, "runs", run_name(m, a.env, a.seed, a.steps), "model.pt") for m in a.methods]
        cmd = [sys.executable, os.path.join(ROOT, "attacks", "eval_all.py"), "--ckpt", *ckpts, "--attacks", a.attacks,
               "--episodes", str(a.episodes), *a.extra_attack_args.split()]
        print("running:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": str(a.jobs)})

    print(f"\n{a.env}, seed {a.seed}, {a.steps} agent steps, {a.episodes} evaluation episodes per column")
    rows = {}
    for m in a.methods:
        stem = os.path.join(ROOT, "runs", run_name(m, a.env, a.seed, a.steps), "model")
        if os.path.isfile(f"{stem}_attacks.json"):
            rows[m] = (json.load(open(f"{stem}_attacks.json")), stem)
        else:
            print(f"missing: {stem}_attacks.json")
    import torch

    from attacks.eval_all import ATTACKS

    cols = [n for n in ATTACKS if any(n in row["attacks"] for row, _ in rows.values())]
    print("| method | " + " | ".join(ATTACKS[c][0] for c in cols) +
          " | worst | env steps (agent + adversary) | steps/s (updating phase, 1 thread, shared machine) |")
    print("|---" * (len(cols) + 4) + "|")
    for m, (row, stem) in rows.items():
        ckpt = torch.load(f"{stem}.pt", map_location="cpu", weights_only=True)
        adversary_steps = ckpt["train_state"].get("adversary_trainer", {}).get("env_steps", 0)
        cells = [f"{row['attacks'][c]['mean']:.0f} ± {row['attacks'][c]['std']:.0f}" if c in row["attacks"] else "–"
                 for c in cols]
        sps = ckpt["summary"].get("sps_updating", ckpt["summary"]["sps"])
        print(f"| {m} | " + " | ".join(cells) + f" | **{row['worst']['mean']:.0f}** | {ckpt['global_step']} + "
              f"{adversary_steps} | {sps:.1f} |")

if __name__ == "__main__":
    main()
