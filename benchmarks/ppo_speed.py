"""Training speed of the PPO-family scripts on this machine: whole-run agent steps/s (rollouts and updates, the
reference settings: 2048-step rollouts, 10 + 10 epochs of 32 minibatches, 64x64 networks) and, for ATLA, all
environment steps/s (agent + adversary).

    python benchmarks/ppo_speed.py --env Hopper-v4 --rollouts 3 --rounds 2 --threads 1

Each measurement is a fresh subprocess; the scripts run round-robin `--rounds` times and the median is reported,
so background load hits every script alike: the ratios are the meaningful numbers. The SA regulariser is active
from the first rollout (--reg-eps-ramp small) so its cost is the steady-state one.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAMP = ["--reg-eps-ramp", "0.001"]
VARIANTS = {
    "ppo": ("ppo.py", []),
    "robust_ppo": ("robust_ppo.py", RAMP),
    "atla_ppo": ("atla_ppo.py", RAMP),
    "atla_ppo --pa": ("atla_ppo.py", RAMP + ["--pa"]),
    "wocar_ppo": ("wocar_ppo.py", RAMP),
}


def measure(script: str, extra: list[str], env: str, rollouts: int, threads: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        cmd = [sys.executable, os.path.join(ROOT, script), "--env-id", env, "--total-timesteps", str(2048 * rollouts),
               "--eval-every", "0", "--eval-episodes", "1", "--threads", str(threads), "--save-path", path,
               "--run-name", "speed", *extra]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("WARNING:")]
            sys.exit(f"error: {script} failed (exit {proc.returncode}): {lines[-1] if lines else 'no message'}")
        ckpt = torch.load(path, weights_only=True)
    sps = ckpt["summary"]["sps"]
    adversary = ckpt["train_state"].get("adversary_steps", 0)
    return sps, sps * (ckpt["global_step"] + adversary) / ckpt["global_step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Hopper-v4")
    p.add_argument("--rollouts", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    a = p.parse_args()
    results: dict = {v: [] for v in a.variants}
    for r in range(a.rounds):
        for v in a.variants:
            script, extra = VARIANTS[v]
            results[v].append(measure(script, extra, a.env, a.rollouts, a.threads))
            print(f"round {r + 1}: {v}: {results[v][-1][0]:.0f} agent steps/s", flush=True)
    base = statistics.median(s for s, _ in results["ppo"]) if "ppo" in results else None
    print(f"\n{a.env}, {a.rollouts} rollouts of 2048, {a.threads} torch thread(s), median of {a.rounds} rounds\n")
    print("| script | agent steps/s | all env steps/s | time per agent step vs ppo.py |\n|---|---|---|---|")
    for v, runs in results.items():
        agent = statistics.median(s for s, _ in runs)
        total = statistics.median(t for _, t in runs)
        ratio = f"{base / agent:.2f}" if base else "–"
        print(f"| `{v}` | {agent:.0f} | {total:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
