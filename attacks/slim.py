"""Slim copy of a checkpoint: actor, critics, normalizer, adversary and metadata, no optimizer, no target
critic, no training state. Every attacker reads it; `--resume` does not (it needs the full file).

    python attacks/slim.py runs/x/model.pt results/study/models/x.pt
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import run_cli, slim_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint written by a method script")
    p.add_argument("dst", help="where to write the slim copy")
    args = p.parse_args()
    slim_checkpoint(args.src, args.dst)
    print(f"{args.dst}: {os.path.getsize(args.dst) / 1e6:.2f} MB (from {os.path.getsize(args.src) / 1e6:.2f} MB)")


if __name__ == "__main__":
    run_cli(main)
