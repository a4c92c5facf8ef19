"""Old vs new attack suite on one checkpoint, same evaluation episodes, every column side by side.

The old suite is the attack code of an earlier commit (`--old-ref`, default 17ae4df: before the attack-strength
work), checked out into a temporary git worktree and run with the settings its README published; the new suite
is this tree's `attacks/eval_all.py` with `--new-args`. Both evaluate episodes seed..seed+N-1.

    python benchmarks/attack_upgrade.py --ckpt results/halfcheetah_50k/models/sac__HalfCheetah-v4__s1.pt
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_ARGS = "--attack-budget 30000 --seeds 1 --rs-steps 30000 --rs-updates 20000 --rs-settings 0.1:0.05 1.0:0.2"
NEW_ARGS = "--search quick --attack-budget 30000 --rs-grid quick"


def start_suite(root: str, ckpt: str, episodes: int, extra: str, log: str) -> subprocess.Popen:
    cmd = [sys.executable, os.path.join(root, "attacks", "eval_all.py"), "--ckpt", ckpt, "--episodes", str(episodes),
           *extra.split()]
    print("running:", " ".join(cmd), f"> {log}", flush=True)
    with open(log, "w") as f:  # one torch thread each: the two suites may share the cores
        return subprocess.Popen(cmd, cwd=root, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish_suite(proc: subprocess.Popen, ckpt: str, log: str) -> dict:
    if proc.wait() != 0:
        sys.exit(f"error: {' '.join(proc.args[1:3])} failed (exit {proc.returncode}); see {log}")
    return json.load(open(os.path.splitext(ckpt)[0] + "_attacks.json"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--old-ref", default="17ae4df")
    p.add_argument("--old-args", default=OLD_ARGS)
    p.add_argument("--new-args", default=NEW_ARGS)
    p.add_argument("--parallel", action="store_true", help="run the old and the new suite at the same time "
                   "(one torch thread each; per-column seconds are then comparable to each other only)")
    p.add_argument("--out", default=None, help="JSON with both rows (default: <ckpt stem>_attack_upgrade.json)")
    a = p.parse_args()
    if not os.path.isfile(a.ckpt):
        sys.exit(f"error: checkpoint not found: {a.ckpt}")
    out = a.out or os.path.splitext(a.ckpt)[0] + "_attack_upgrade.json"
    work = tempfile.mkdtemp(prefix="attack_upgrade_")
    try:
        old_root = os.path.join(work, "old")
        made = subprocess.run(["git", "worktree", "add", "-q", "--detach", old_root, a.old_ref], cwd=ROOT,
                              capture_output=True, text=True)
        if made.returncode != 0:
            sys.exit(f"error: cannot check out --old-ref {a.old_ref}: {made.stderr.strip().splitlines()[-1]}")
        rows, running = {}, {}
        for label, root, extra in (("old", old_root, a.old_args), ("new", ROOT, a.new_args)):
            ckpt = os.path.join(work, f"{label}.pt")  # each suite writes its _attacks.json next to its own copy
            shutil.copyfile(a.ckpt, ckpt)
            log = os.path.splitext(out)[0] + f"_{label}.log"
            running[label] = (start_suite(root, ckpt, a.episodes, extra, log), ckpt, log)
            if not a.parallel:
                rows[label] = finish_suite(*running.pop(label))
        for label, job in running.items():
            rows[label] = finish_suite(*job)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", os.path.join(work, "old")], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    with open(out, "w") as f:
        json.dump({"ckpt": a.ckpt, "episodes": a.episodes, "old_ref": a.old_ref, "old_args": a.old_args,
                   "new_args": a.new_args, "old": rows["old"], "new": rows["new"]}, f, indent=1)
    names = [n for n in rows["new"]["attacks"] if n in rows["old"]["attacks"]] + \
        [n for n in rows["new"]["attacks"] if n not in rows["old"]["attacks"]]
    print(f"\n{a.ckpt}, {a.episodes} episodes (seeds 0..{a.episodes - 1}); old = {a.old_ref} with `{a.old_args}`; "
          f"new = this tree with `{a.new_args}`\n")
    print("| column | old | new | new − old | seconds old / new |\n|---|---|---|---|---|")
    for n in names:
        o, w = rows["old"]["attacks"].get(n), rows["new"]["attacks"][n]
        old_cell = f"{o['mean']:.0f} ± {o['std']:.0f}" if o else "–"
        diff = f"{w['mean'] - o['mean']:+.0f}" if o else "–"
        secs = f"{o['seconds']:.0f} / {w['seconds']:.0f}" if o else f"– / {w['seconds']:.0f}"
        print(f"| {w['column']} | {old_cell} | {w['mean']:.0f} ± {w['std']:.0f} | {diff} | {secs} |")
    ow = rows["old"]["worst"]
    nw = rows["new"]["worst"]
    print(f"| **Worst** | {ow['mean']:.0f} ({ow['attack']}; natural counted then) | {nw['mean']:.0f} ({nw['attack']}) | "
          f"{nw['mean'] - ow['mean']:+.0f} | |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
