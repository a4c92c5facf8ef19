"""Slims a running trial's full checkpoint while it holds a given step: the off-grid slim models of this study
whose trial runs from code without `sweep.py --slim-at` (the main lines' worktree, 5b03b2f).

    python results/halfcheetah_1m/slim_at.py 650000 \
        /work/study-state-kl/branch_reg_kl_matched/sac_valt_eps__HalfCheetah-v4__s1/model.pt /tmp/klm_650000.pt

A trial saves its model.pt every --save-every (50k) steps; this polls it every 30 s and writes the slim copy
(attacks/slim.py's) when its step is the target. It says so and exits 1 if the file has already passed the target.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch  # noqa: E402

from attacks.common import slim_checkpoint  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[0].isdigit():
        print("usage: slim_at.py STEP FULL_CHECKPOINT SLIM_OUT", file=sys.stderr)
        return 2
    target, src, dst = int(argv[0]), argv[1], argv[2]
    if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        print(f"slim_at.py: no folder for {dst}", file=sys.stderr)
        return 2
    while True:
        try:
            step = torch.load(src, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        except Exception as e:  # not there yet, or caught between the temp file and the rename
            print(time.strftime("%H:%M:%S"), src, "unreadable now:", type(e).__name__, flush=True)
            step = None
        if step == target:
            slim = slim_checkpoint(src, dst)
            if slim["global_step"] == target:  # else the trial saved again between the two reads
                print(time.strftime("%H:%M:%S"), "slimmed", src, "at", target, "->", dst, flush=True)
                return 0
            os.remove(dst)
            step = slim["global_step"]
        if step is not None and step > target:
            print(time.strftime("%H:%M:%S"), "missed:", src, "is already at", step, flush=True)
            return 1
        time.sleep(30)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
