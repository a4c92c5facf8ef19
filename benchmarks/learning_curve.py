"""Train method scripts on a few tasks with one seed and budget; print final clean return and SPS.

    python benchmarks/learning_curve.py --envs HalfCheetah-v4 Hopper-v4 --steps 50000 --jobs 2

Each run is a subprocess (`python <method>.py ...`) writing to runs/bench_<method>_<env>_<seed>/; the
table is read back from the checkpoints, so a finished run can be re-tabulated with --only-report.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_name(method: str, env_id: str, seed: int, steps: int) -> str:
    return f"bench_{method}_{env_id}_{seed}_{steps}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["sac"], help="script names without .py")
    p.add_argument("--envs", nargs="+", default=["HalfCheetah-v4", "Hopper-v4"])
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (each with --threads 1 when > 1)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--extra", default="", help="extra arguments passed to every script")
    p.add_argument("--only-report", action="store_true")
    a = p.parse_args()

    runs = [(m, e) for e in a.envs for m in a.methods]
    if not a.only_report:
        pending, active = list(runs), []
        while pending or active:
            while pending and len(active) < a.jobs:
                m, e = pending.pop(0)
                name = run_name(m, e, a.seed, a.steps)
                cmd = [sys.executable, os.path.join(ROOT, f"{m}.py"), "--env-id", e, "--total-timesteps", str(a.steps),
                       "--seed", str(a.seed), "--run-name", name, "--eval-episodes", str(a.eval_episodes),
                       "--eval-every", str(max(a.steps // 10, 1000)), *a.extra.split()]
                if a.jobs > 1:
                    cmd += ["--threads", "1"]
                os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
                log = open(os.path.join(ROOT, "runs", f"{name}.log"), "w")
                print("running:", " ".join(cmd[1:]), flush=True)
                active.append((subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), time.time(), m, e))
            time.sleep(2)
            for item in list(active):
                proc, t0, m, e = item
                if proc.poll() is not None:
                    active.remove(item)
                    print(f"finished {m} {e} rc={proc.returncode} in {time.time() - t0:.0f}s", flush=True)

    print("\n| method | env | steps | final clean return (mean ± std) | SPS (whole run) |")
    print("|---|---|---|---|---|")
    for m, e in runs:
        name = run_name(m, e, a.seed, a.steps)
        ckpt_path = os.path.join(ROOT, "runs", name, "model.pt")
        if not os.path.isfile(ckpt_path):
            print(f"| {m} | {e} | {a.steps} | missing (see runs/{name}.log) | |")
            continue
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        s = ckpt["summary"]
        print(f"| {m} | {e} | {ckpt['global_step']} | {s['eval_mean']:.1f} ± {s['eval_std']:.1f} | {s['sps']:.1f} |")


if __name__ == "__main__":
    main()
