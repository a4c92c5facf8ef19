"""What a fresh machine's resume from the committed copy changes: continue a full checkpoint and its
sweep.write_resume_copy copy for --steps steps from an empty replay buffer, with the same RNG draws for both
(torch and numpy generators reseeded to draw k), and print each run's final evaluation.

    python results/halfcheetah_1m/continuation_check.py /work/study-state/halfcheetah_1m/sac__HalfCheetah-v4__s1/model.pt \
        --script /work/study-code/sac.py --draws 4 --steps 1500 --episodes 3
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import sweep  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a full SAC-family checkpoint (its buffer, if any, is not used)")
    p.add_argument("--script", required=True, help="the method script that trained it (the study's pinned copy)")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--episodes", type=int, default=3)
    a = p.parse_args()
    for path in (a.checkpoint, a.script):
        if not os.path.isfile(path):
            sys.exit(f"error: {path} not found")
    import numpy as np
    import torch

    work = tempfile.mkdtemp(prefix="continuation_")
    compact = os.path.join(work, "compact.pt")
    sweep.write_resume_copy(a.checkpoint, compact)
    for draw in range(a.draws):
        for kind, source in (("full", a.checkpoint), ("compact", compact)):
            ckpt = torch.load(source, map_location="cpu", weights_only=True)
            ckpt["train_state"].update(buffer_file=None, torch_rng=torch.Generator().manual_seed(draw).get_state(),
                                       numpy_rng=np.random.default_rng(draw).bit_generator.state)
            start = os.path.join(work, f"{kind}_{draw}.pt")
            torch.save(ckpt, start)
            run = subprocess.run([sys.executable, a.script, "--env-id", ckpt["env_id"], "--resume", start,
                                  "--total-timesteps", str(ckpt["global_step"] + a.steps), "--eval-every", "0",
                                  "--eval-episodes", str(a.episodes), "--save-every", "0", "--run-name",
                                  f"{kind}_{draw}", "--save-path", os.path.join(work, f"out_{kind}_{draw}.pt"),
                                  "--threads", "1"], capture_output=True, text=True, cwd=work)
            final = [line for line in run.stdout.splitlines() if "final eval" in line]
            print(f"draw {draw} {kind:7s} {final[-1] if final else 'failed: ' + run.stderr[-300:]}", flush=True)


if __name__ == "__main__":
    main()
