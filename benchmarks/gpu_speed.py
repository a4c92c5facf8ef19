"""Training speed on a GPU: steady-state steps/s of each method's updating phase (one gradient update per
environment step, 256x256 nets, batch 256), eager and with `--compile`.

    python benchmarks/gpu_speed.py --env HalfCheetah-v4 --warmup-steps 1000 --steps 5000 --out gpu_speed.jsonl

The steady-state settings are benchmarks/speed.py's (every adversary and regulariser active from the first update).
Each variant is a fresh subprocess of the method script on CUDA. Its steps/s is timed between two of its progress
lines, the first `--warmup-steps` updates after learning starts (torch.compile's compilation, CUDA's lazy start)
left out: steps / seconds between the lines as they arrive here. The variants run one after another, so they do not
share the GPU; `--deadline` (seconds) skips those that would start after it, so a lease-bounded run still reports.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import ROOT, VARIANTS  # noqa: E402

DEFAULT = ["sac", "sac --compile", "sac_valt_eps --compile", "sac_valt_eps", "sac_valt_soft --compile",
           "robust_sac --compile"]


def variant_command(name: str, env: str, learning_starts: int, total: int, log_every: int) -> list[str]:
    compiled = name.endswith(" --compile")
    script, extra = VARIANTS[name.removesuffix(" --compile")] if compiled else VARIANTS[name]
    run = name.replace(" ", "_").replace("-", "")
    return [sys.executable, os.path.join(ROOT, f"{script}.py"), "--env-id", env, "--total-timesteps", str(total),
            "--learning-starts", str(learning_starts), "--eval-every", "0", "--eval-episodes", "1", "--save-every", "0",
            "--log-every", str(log_every), "--run-name", f"gpu_speed_{run}", "--save-path",
            f"/tmp/gpu_speed/{run}/model.pt", *extra, *(["--compile"] if compiled else [])]


def measure(name: str, a: argparse.Namespace) -> dict:
    """Run one variant; time its progress lines as they arrive (step -> seconds since launch)."""
    start_measured = a.learning_starts + a.warmup_steps
    total = start_measured + a.steps
    cmd = variant_command(name, a.env, a.learning_starts, total, a.log_every)
    launched = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd="/tmp", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"})
    arrivals: dict[int, float] = {}
    tail: list[str] = []
    for line in proc.stdout:
        now = time.perf_counter() - launched
        tail = (tail + [line.rstrip()])[-20:]
        parts = line.split()
        if len(parts) > 2 and parts[1] == "step" and "/" in parts[2]:
            arrivals[int(parts[2].split("/")[0])] = now
    proc.wait()
    row = {"variant": name, "returncode": proc.returncode, "seconds_total": round(time.perf_counter() - launched, 1)}
    if proc.returncode != 0 or start_measured not in arrivals or total not in arrivals:
        return {**row, "error": "\n".join(tail)}
    sps = a.steps / (arrivals[total] - arrivals[start_measured])
    warm = arrivals[start_measured] - arrivals.get(a.learning_starts, 0.0)
    return {**row, "sps": round(sps, 1), "warmup_seconds": round(warm, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v4")
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--warmup-steps", type=int, default=1000, help="updating steps left out (compilation, CUDA start)")
    p.add_argument("--steps", type=int, default=5000, help="updating steps measured per variant")
    p.add_argument("--log-every", type=int, default=500)
    p.add_argument("--variants", nargs="+", default=DEFAULT, metavar="VARIANT",
                   help=f"from {sorted(VARIANTS)}, each optionally followed by ' --compile' (one quoted word)")
    p.add_argument("--deadline", type=float, default=0.0, help="seconds after which no variant starts (0: none)")
    p.add_argument("--out", default="", help="append one JSON line per variant here")
    a = p.parse_args()
    for name in a.variants:
        if name.removesuffix(" --compile") not in VARIANTS:
            p.error(f"unknown variant {name!r}; known: {sorted(VARIANTS)} (add ' --compile')")
    for flag in ("learning_starts", "warmup_steps", "steps", "log_every"):
        if getattr(a, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    if a.warmup_steps % a.log_every or a.steps % a.log_every or a.learning_starts % a.log_every:
        p.error("--learning-starts, --warmup-steps and --steps must be multiples of --log-every (timed at its lines)")
    import torch

    if not torch.cuda.is_available():
        p.error("no CUDA device: this benchmark times the GPU path (benchmarks/speed.py times the CPU)")
    gpu = torch.cuda.get_device_name(0)
    print(f"{gpu}; torch {torch.__version__}; {a.env}; {a.steps} updating steps timed after {a.warmup_steps}",
          flush=True)
    began, rows = time.perf_counter(), []
    for name in a.variants:
        if a.deadline and time.perf_counter() - began > a.deadline:
            rows.append({"variant": name, "error": "skipped: --deadline reached"})
            print(f"{name}: skipped (deadline)", flush=True)
            continue
        row = {**measure(name, a), "gpu": gpu, "torch": torch.__version__, "env": a.env, "steps": a.steps,
               "warmup_steps": a.warmup_steps, "date": time.strftime("%Y-%m-%d")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"\n| method | steps/s ({gpu}, steady state) | warm-up seconds (first {a.warmup_steps} updates) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row.get('sps', 'failed')} | {row.get('warmup_seconds', '–')} |")


if __name__ == "__main__":
    main()
