"""Training speed on this machine: steps/s of each method in the updating phase (one gradient update per
environment step, 256x256 nets, batch 256), next to Stable-Baselines3's SAC at matched settings and to the
machine's own matmul throughput (the FLOP bound of a SAC update).

    pip install -r benchmarks/requirements.txt     # stable-baselines3, only for this comparison
    python benchmarks/speed.py --env HalfCheetah-v4 --steps 1500 --rounds 3 --threads 2

Each measurement is a fresh subprocess; the methods are run round-robin `--rounds` times and the median is
reported, so background load hits every method alike. Ratios are the meaningful numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Steady-state settings: every adversary and regulariser active from the first update; VALT-EPS at a constant
# k_w = 0.5 (both mixture components; the sampled mixture then runs PGD on half the batch, its average over a
# HalfCheetah run being k_w = 0.6). Variant name -> (script, extra CLI flags).
VARIANTS = {
    "sac": ("sac", []),
    "robust_sac": ("robust_sac", ["--reg-eps-start-step", "0", "--reg-eps-end-step", "1"]),
    "sac_valt_eps": ("sac_valt_eps", ["--reg-eps-start-step", "0", "--reg-eps-end-step", "1", "--worst-rate", "0.5",
                                      "--worst-rate-remain-steps", "1"]),
    "sac_valt_eps --mixture sampled": ("sac_valt_eps", ["--reg-eps-start-step", "0", "--reg-eps-end-step", "1",
                                                        "--worst-rate", "0.5", "--worst-rate-remain-steps", "1",
                                                        "--mixture", "sampled"]),
    "sac_valt_soft": ("sac_valt_soft", ["--reg-eps-start-step", "0", "--reg-eps-end-step", "1"]),
    "sac --compile": ("sac", ["--compile"]),  # not in the default list: the GPU path, slower on CPU
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "sac --compile"]


def matmul_gflops(threads: int, seconds: float = 2.0) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    for _ in range(50):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            a @ b
        n += 50
    return 2 * 256**3 * n / (time.perf_counter() - start) / 1e9


def update_gflop(variant: str, env: str, learning_starts: int, updates: int = 5) -> float:
    """Matmul GFLOP of one gradient update of `variant` (forward and backward, counted by torch's
    FlopCounterMode on a random batch, averaged over a few updates since the sampled mixture varies)."""
    import torch
    import tyro
    from torch.utils.flop_counter import FlopCounterMode

    script, extra = VARIANTS[variant]
    module = __import__(script)
    args = module.resolve_args(tyro.cli(module.Args, args=["--env-id", env, "--no-cuda", *extra]))
    sac_env = module.make_env(env, module.parse_env_kwargs(env, ""))
    obs_dim, act_dim = sac_env.observation_space.shape[0], sac_env.action_space.shape[0]
    learner = module.Learner(args, obs_dim, act_dim, sac_env.action_space.low, sac_env.action_space.high,
                             torch.device("cpu"))
    b = args.batch_size
    batch = (torch.randn(b, obs_dim), torch.rand(b, act_dim) * 2 - 1, torch.randn(b), torch.randn(b, obs_dim),
             torch.zeros(b), torch.ones(b))
    with FlopCounterMode(display=False) as counter:
        for _ in range(updates):
            learner.update(*batch, learning_starts + 1)
    return counter.get_total_flops() / updates / 1e9


def run_ours(variant: str, env: str, steps: int, threads: int, learning_starts: int) -> float:
    method, extra = VARIANTS[variant]
    # method-specific flags go through the CLI parser so they mean exactly what the README says
    cli = f"""
import sys, json, contextlib, io, os
os.chdir("/tmp")
sys.path.insert(0, {ROOT!r})
import tyro
import {method} as m
args = tyro.cli(m.Args, args={["--env-id", env, "--total-timesteps", str(learning_starts + steps),
                               "--learning-starts", str(learning_starts), "--eval-every", "0", "--eval-episodes", "1",
                               "--save-every", "0", "--log-every", "1000000000", "--threads", str(threads),
                               "--no-cuda", "--run-name", f"speed_{method}", "--save-path",
                               f"/tmp/speed_{method}/model.pt", *extra]!r})
with contextlib.redirect_stdout(io.StringIO()):
    out = m.train(args)
import torch
print(json.dumps(torch.load(out["save_path"], weights_only=True)["summary"]["sps_updating"]))
"""
    proc = subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.strip().splitlines()[-1])


def run_sb3(env: str, steps: int, threads: int, learning_starts: int) -> float:
    code = f"""
import time, torch, gymnasium as gym, warnings
warnings.filterwarnings("ignore")
torch.set_num_threads({threads})
from stable_baselines3 import SAC
model = SAC("MlpPolicy", gym.make({env!r}), learning_starts={learning_starts}, batch_size=256, buffer_size=1_000_000,
            train_freq=1, gradient_steps=1, policy_kwargs=dict(net_arch=[256, 256]), device="cpu", verbose=0, seed=1)
model.learn(total_timesteps={learning_starts} + 50)
start = time.perf_counter()
model.learn(total_timesteps={steps}, reset_num_timesteps=False)
print({steps} / (time.perf_counter() - start))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v4")
    p.add_argument("--steps", type=int, default=1500, help="updating steps measured per run")
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--methods", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), metavar="VARIANT",
                   help=f"any of {list(VARIANTS)}")
    p.add_argument("--no-sb3", action="store_true")
    a = p.parse_args()
    if a.steps <= 0 or a.rounds <= 0 or a.threads <= 0:
        p.error("--steps, --rounds and --threads must be positive")
    import gymnasium as gym

    if a.env not in gym.registry:
        p.error(f"unknown environment id {a.env!r}")

    sys.path.insert(0, ROOT)
    gflops = matmul_gflops(a.threads)
    flop = {v: update_gflop(v, a.env, a.learning_starts) for v in a.methods}
    sac_flop = flop.get("sac") or update_gflop("sac", a.env, a.learning_starts)
    flop["sb3_sac"] = sac_flop  # matched settings: the same networks and batch
    print(f"{a.env}; {a.threads} threads; 256x256 fp32 matmul {gflops:.0f} GFLOP/s; SAC update {sac_flop:.3f} GFLOP "
          f"=> FLOP bound {gflops / sac_flop:.0f} updates/s", flush=True)
    names = list(a.methods) + ([] if a.no_sb3 else ["sb3_sac"])
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.rounds):
        for n in names:
            sps = run_sb3(a.env, a.steps, a.threads, a.learning_starts) if n == "sb3_sac" else \
                run_ours(n, a.env, a.steps, a.threads, a.learning_starts)
            samples[n].append(sps)
            print(f"round {r + 1}/{a.rounds} {n}: {sps:.1f} steps/s", flush=True)
    med = {n: statistics.median(v) for n, v in samples.items()}
    print(f"\n{time.strftime('%Y-%m-%d')}, {a.env}, {a.threads} threads, median of {a.rounds} rounds of {a.steps} "
          "updating steps (one update per step, 256x256, batch 256)")
    print("| method | steps/s | ratio to SB3 SAC | cost vs our SAC | matmul GFLOP per update | FLOP cost vs SAC "
          "(the floor) | fraction of its FLOP bound |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        sb3 = f"{med[n] / med['sb3_sac']:.2f}" if "sb3_sac" in med else "–"
        cost = f"{med['sac'] / med[n]:.2f}" if "sac" in med else "–"
        print(f"| {n} | {med[n]:.1f} | {sb3} | {cost} | {flop[n]:.3f} | {flop[n] / sac_flop:.2f} | "
              f"{med[n] * flop[n] / gflops:.0%} |")
    print(json.dumps({"median_sps": med, "samples": samples, "update_gflop": flop, "matmul_gflops": gflops}))


if __name__ == "__main__":
    main()
