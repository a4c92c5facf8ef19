"""Training speed on a GPU: steady-state steps/s of each method's updating phase (one gradient update per
environment step, 256x256 nets, batch 256), eager and with `--compile`.

    python benchmarks/gpu_speed.py --env HalfCheetah-v4 --warmup-steps 1000 --steps 5000 --out gpu_speed.jsonl

The steady-state settings are benchmarks/speed.py's (every adversary and regulariser active from the first update).
Each variant is a fresh subprocess of the method script on CUDA. Its steps/s is timed between two of its progress
lines, the first `--warmup-steps` updates after learning starts (torch.compile's compilation, CUDA's lazy start)
left out: steps / seconds between the lines as they arrive here. The variants run one after another, so they do not
share the GPU; `--deadline` (seconds from the start) skips those that would start after it and stops one that runs
past it, so a lease-bounded run still reports.

    python benchmarks/gpu_speed.py --count-ops     # no GPU needed

counts the tensor operations one step of each SAC-family script dispatches (each a kernel launch on a GPU, where
small batches make the update launch-bound): replay write, prioritized sampling, update, priority write-back (torch
profiler, CPU), in benchmarks/speed.py's steady state (every adversary and regulariser active).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import ROOT, VARIANTS  # noqa: E402

BEGAN = time.perf_counter()  # --deadline counts from the program's start

DEFAULT = ["sac", "sac --compile", "sac_valt_eps --compile", "sac_valt_eps", "sac_valt_soft --compile",
           "robust_sac --compile"]


def variant_command(name: str, env: str, learning_starts: int, total: int, log_every: int,
                    workdir: str = "/tmp/gpu_speed") -> list[str]:
    compiled = name.endswith(" --compile")
    script, extra = VARIANTS[name.removesuffix(" --compile")] if compiled else VARIANTS[name]
    run = name.replace(" ", "_").replace("-", "")
    return [sys.executable, os.path.join(ROOT, f"{script}.py"), "--env-id", env, "--total-timesteps", str(total),
            "--learning-starts", str(learning_starts), "--eval-every", "0", "--eval-episodes", "1", "--save-every", "0",
            "--log-every", str(log_every), "--run-name", f"gpu_speed_{run}", "--save-path",
            os.path.join(workdir, run, "model.pt"), *extra, *(["--compile"] if compiled else [])]


def measure(name: str, a: argparse.Namespace, timeout: float | None = None, workdir: str = "/tmp/gpu_speed") -> dict:
    """Run one variant; time its progress lines as they arrive (step -> seconds since launch). The child is killed
    after `timeout` seconds (then the row is an error)."""
    start_measured = a.learning_starts + a.warmup_steps
    total = start_measured + a.steps
    cmd = variant_command(name, a.env, a.learning_starts, total, a.log_every, workdir)
    os.makedirs(workdir, exist_ok=True)
    launched = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"})
    watchdog = threading.Timer(timeout, proc.kill) if timeout else None
    if watchdog:
        watchdog.start()
    arrivals: dict[int, float] = {}
    tail: list[str] = []
    for line in proc.stdout:
        now = time.perf_counter() - launched
        tail = (tail + [line.rstrip()])[-20:]
        parts = line.split()
        if len(parts) > 2 and parts[1] == "step" and "/" in parts[2]:
            arrivals[int(parts[2].split("/")[0])] = now
    proc.wait()
    if watchdog:
        watchdog.cancel()
    row = {"variant": name, "returncode": proc.returncode, "seconds_total": round(time.perf_counter() - launched, 1)}
    if proc.returncode != 0 or start_measured not in arrivals or total not in arrivals:
        return {**row, "error": "\n".join(tail)}
    sps = a.steps / (arrivals[total] - arrivals[start_measured])
    warm = arrivals[start_measured] - arrivals.get(a.learning_starts, 0.0)
    return {**row, "sps": round(sps, 1), "warmup_seconds": round(warm, 1)}


# every SAC-family script, in benchmarks/speed.py's steady state (SAC-PPO: its SAC update; its PPO adversary
# trains on its own rollouts)
COUNTED = [v for v in VARIANTS if not v.endswith("--compile")] + ["sac_ppo"]


def count_ops(env: str, variant: str = "sac") -> dict:
    """Top-level aten operations (about one kernel launch each on a GPU) of the phases of one step of a SAC-family
    script, with the paper's settings (1M prioritized replay, 256x256, batch 256) and the variant's steady-state
    flags, counted by torch's profiler on the CPU."""
    import importlib

    import numpy as np
    import torch
    import tyro
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, ROOT)
    script, extra = VARIANTS.get(variant, (variant, []))
    method = importlib.import_module(script)
    args = method.resolve_args(tyro.cli(method.Args, args=["--env-id", env, "--no-cuda", *extra]))
    probe = method.make_env(env, method.parse_env_kwargs(env, ""))
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    cpu = torch.device("cpu")
    learner = method.Learner(args, obs_dim, act_dim, -np.ones(act_dim), np.ones(act_dim), cpu)
    buffer = method.PrioritizedReplayBuffer(args.buffer_size, obs_dim, act_dim, cpu)
    rng = np.random.default_rng(0)

    def add():
        buffer.add(rng.normal(size=obs_dim), rng.uniform(-1, 1, act_dim), 0.1, rng.normal(size=obs_dim), False)

    for _ in range(2 * args.batch_size):
        add()
    phases = {"replay write": add, "prioritized sampling": lambda: buffer.sample(args.batch_size, 0.5)}
    batch = buffer.sample(args.batch_size, 0.5)
    logs = learner.update(*batch[1:], args.learning_starts + 1)
    phases["update (forward, backward, optimizer steps)"] = lambda: learner.update(*batch[1:], args.learning_starts + 1)
    phases["priority write-back"] = lambda: buffer.update_priorities(batch[0], logs["td_errors"])
    counts = {}
    for name, fn in phases.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        counts[name] = sum(1 for e in prof.events() if e.name.startswith("aten::")
                           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v4")
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--warmup-steps", type=int, default=1000, help="updating steps left out (compilation, CUDA start)")
    p.add_argument("--steps", type=int, default=5000, help="updating steps measured per variant")
    p.add_argument("--log-every", type=int, default=500)
    p.add_argument("--variants", nargs="+", default=DEFAULT, metavar="VARIANT",
                   help=f"from {sorted(VARIANTS)}, each optionally followed by ' --compile' (one quoted word)")
    p.add_argument("--deadline", type=float, default=0.0,
                   help="seconds after which no variant starts and a running one is stopped (0: none)")
    p.add_argument("--out", default="", help="append one JSON line per variant here")
    p.add_argument("--count-ops", action="store_true",
                   help="count the tensor operations of one step of every SAC-family script and exit")
    a = p.parse_args()
    import gymnasium as gym

    if a.env not in gym.registry:
        p.error(f"unknown environment id {a.env!r}")
    if a.count_ops:
        print(f"top-level tensor operations of one step ({a.env}; plus the acting forward):\n")
        rows = {variant: count_ops(a.env, variant) for variant in COUNTED}
        phases = list(rows["sac"])
        print("| script | " + " | ".join(phases) + " | total |\n|---|" + "---|" * (len(phases) + 1))
        for variant, counts in rows.items():
            print(f"| {variant} | " + " | ".join(str(counts[k]) for k in phases) + f" | {sum(counts.values())} |")
        return
    for name in a.variants:
        if name.removesuffix(" --compile") not in VARIANTS or name.endswith(" --compile --compile"):
            p.error(f"unknown variant {name!r}; known: {sorted(VARIANTS)} (add ' --compile')")
    for flag in ("learning_starts", "warmup_steps", "steps", "log_every"):
        if getattr(a, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    if a.deadline < 0:
        p.error("--deadline must be >= 0")
    if a.learning_starts < 256:
        p.error("--learning-starts must be at least the batch size (256): updates start only once a batch fits")
    if a.warmup_steps % a.log_every or a.steps % a.log_every or a.learning_starts % a.log_every:
        p.error("--learning-starts, --warmup-steps and --steps must be multiples of --log-every (timed at its lines)")
    import torch

    if not torch.cuda.is_available():
        p.error("no CUDA device: this benchmark times the GPU path (benchmarks/speed.py times the CPU)")
    gpu = torch.cuda.get_device_name(0)
    print(f"{gpu}; torch {torch.__version__}; {a.env}; {a.steps} updating steps timed after {a.warmup_steps}",
          flush=True)
    rows = []
    for name in a.variants:
        left = a.deadline - (time.perf_counter() - BEGAN) if a.deadline else None
        if left is not None and left <= 0:
            row = {"variant": name, "skipped": "--deadline reached"}
        else:
            row = measure(name, a, timeout=left)
        row = {**row, "gpu": gpu, "torch": torch.__version__, "env": a.env, "steps": a.steps,
               "warmup_steps": a.warmup_steps, "date": time.strftime("%Y-%m-%d")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"\n| method | steps/s ({gpu}, steady state) | warm-up seconds (first {a.warmup_steps} updates) |")
    print("|---|---|---|")
    for row in rows:
        sps = row.get("sps", "skipped (deadline)" if "skipped" in row else "failed")
        print(f"| {row['variant']} | {sps} | {row.get('warmup_seconds', '–')} |")


if __name__ == "__main__":
    main()
