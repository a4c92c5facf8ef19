"""No perturbation: the victim's clean return on the shared evaluation seeds.

    python attacks/natural.py --ckpt runs/<run>/model.pt --episodes 20
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import NoArgs, Victim, rollout, standalone  # noqa: E402

SIDE_BY_SIDE = True  # its episodes run together (common.rollout_side_by_side)
NAME, COLUMN = "natural", "Natural"


def evaluate(victim: Victim, args) -> dict:
    stats = rollout(victim, None, args.episodes, args.seed, args.stochastic)
    return {"stats": stats}


if __name__ == "__main__":
    standalone(__doc__, NoArgs, evaluate, lambda args: NAME)
