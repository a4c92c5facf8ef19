"""Slim copy of a checkpoint: actor, critics, normalizer, adversary and metadata, no optimizer, no target
critic, no training state. Every attacker reads it; `--resume` does not (it needs the full file).

    python attacks/slim.py runs/x/model.pt results/study/models/x.pt
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import parse, run_cli, slim_checkpoint  # noqa: E402


@dataclass
class Args:
    src: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SRC")]  # checkpoint written by a method script
    dst: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DST")]  # where to write the slim copy


def main() -> None:
    args = parse(Args, __doc__)
    slim_checkpoint(args.src, args.dst)
    print(f"{args.dst}: {os.path.getsize(args.dst) / 1e6:.2f} MB (from {os.path.getsize(args.src) / 1e6:.2f} MB)")


if __name__ == "__main__":
    run_cli(main)
