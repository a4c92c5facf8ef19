"""Re-run the MAD and PGD columns of every committed study whose rows used other settings than today's defaults
(results/attack_strength/README.md), merging them into the existing rows (eval_all.py --update), and commit each row
as it lands, so a cut run continues where it stopped.

    python results/attack_strength/rerun_studies.py [--dry-run] [--studies halfcheetah_50k ...]

Per study: each seed's slim model (models/<trial>.pt) first; then the median seed's suite row
(attacks/<trial>_attacks.json and its copy attacks/<method>__<env>.json), whose MAD and PGD columns are copied from
the seed's row just computed (--reuse: the same model bytes, episodes, seed and settings) or computed when there is
none; then the study's tables (results.py). The other columns (RS, learned attackers) keep their settings, which
each row records.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the code that runs
sys.path.insert(0, ROOT)
from attacks import eval_all  # noqa: E402
from attacks.common import copy_row  # noqa: E402
from sweep import git_commit  # noqa: E402

COLUMNS = ("mad", "pgd")
STUDIES = ["halfcheetah_50k", "hopper_ppo_2m", "hopper_atla_wocar", "hopper_pa_atla", "halfcheetah_50k_e2_valt_eps_nope",
           "halfcheetah_50k_e2_valt_eps_nopi", "halfcheetah_50k_e2_valt_eps_regonly",
           "halfcheetah_50k_schedule_valt_eps_kw15k"]  # halfcheetah_minigrid committed no models


def default_settings(kind: str) -> dict:
    args = eval_all.parse(eval_all.Args, "", ["--ckpt", "x"])
    return {name: eval_all.attack_settings(name, args, kind) for name in COLUMNS}


def stale(row_path: str) -> bool:
    row = json.load(open(row_path))
    defaults = default_settings(row.get("kind", "ppo" if row["method"].endswith("ppo") and row["method"] != "sac_ppo"
                                        else "sac"))
    return any(name in row["attacks"] and row["attacks"][name].get("settings") != defaults[name] for name in COLUMNS)


def update(ckpt: str, episodes: int, log: str, reuse: str | None = None) -> None:
    cmd = [sys.executable, os.path.join(ROOT, "attacks", "eval_all.py"), "--ckpt", ckpt, "--attacks", ",".join(COLUMNS),
           "--episodes", str(episodes), "--update", *(["--reuse", reuse] if reuse else [])]
    with open(log, "a") as f:
        f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M')} re-run with today's defaults: {' '.join(cmd[1:])}\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def report(results: str, studies: list[str]) -> str:
    """Each re-run row: its worst and MAD / PGD columns under the settings it was first published with and now."""
    lines = ["| study | row | MAD: before → now | PGD: before → now | worst: before → now |", "|---|---|---|---|---|"]
    pending = []
    for study in studies:
        rows = sorted(glob.glob(os.path.join(results, study, "models", "*_attacks.json")))
        rows += [p for p in sorted(glob.glob(os.path.join(results, study, "attacks", "*__*.json")))
                 if not p.endswith("_attacks.json")]
        for path in rows:
            row = json.load(open(path))
            label = os.path.basename(path).replace("_attacks.json", "").replace(".json", " (median seed's suite)")
            if stale(path):
                pending.append(f"{study}/{label}")
                continue
            first = {name: entries[0]["mean"] for name, entries in row.get("replaced", {}).items()}
            now = {name: row["attacks"][name]["mean"] for name in COLUMNS if "mean" in row["attacks"].get(name, {})}
            before_attacks = {n: ({**a, "mean": first[n]} if n in first else a) for n, a in row["attacks"].items()}
            before = eval_all.worst_of(before_attacks)
            cells = [f"{first[n]:.0f} → {now[n]:.0f}" if n in first else "–" for n in COLUMNS]
            worst = f"{before['mean']:.0f} ({before['attack']}) → {row['worst']['mean']:.0f} ({row['worst']['attack']})"
            lines.append(f"| {study} | {label} | {' | '.join(cells)} | {worst} |")
    if pending:
        lines.append(f"\nNot re-run yet ({len(pending)}): " + ", ".join(pending))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=os.path.join(ROOT, "results"), help="the results/ folder to update")
    p.add_argument("--studies", nargs="+", default=STUDIES)
    p.add_argument("--dry-run", action="store_true", help="list the stale rows, run nothing")
    p.add_argument("--report", action="store_true", help="print the rows that moved (Markdown), run nothing")
    a = p.parse_args()
    if a.report:
        print(report(a.results, a.studies))
        return
    repo = os.path.dirname(os.path.abspath(a.results))
    for study in a.studies:
        out = os.path.join(a.results, study)
        touched = False
        for row_path in sorted(glob.glob(os.path.join(out, "models", "*_attacks.json"))):
            ckpt = row_path[: -len("_attacks.json")] + ".pt"
            if not stale(row_path):
                continue
            print(f"[rerun] {study}: seed row {os.path.basename(ckpt)}", flush=True)
            if a.dry_run:
                continue
            start = time.time()
            episodes = json.load(open(row_path))["episodes"]
            update(ckpt, episodes, row_path[:-5] + ".log")
            md = row_path[:-5] + ".md"
            git_commit([row_path, md, row_path[:-5] + ".log"], f"study {study}: {os.path.basename(ckpt)[:-3]} MAD and "
                       f"PGD re-run with the attack-strength defaults ({time.time() - start:.0f}s)", repo=repo)
            touched = True
        for suite in sorted(glob.glob(os.path.join(out, "attacks", "*__*.json"))):
            if suite.endswith("_attacks.json"):
                continue
            row = json.load(open(suite))
            ckpt = row["ckpt"] if os.path.isfile(row["ckpt"]) else os.path.join(out, "attacks",
                                                                                 os.path.basename(row["ckpt"]))
            row_path = os.path.splitext(ckpt)[0] + "_attacks.json"
            if not stale(suite):
                continue
            print(f"[rerun] {study}: median-seed suite {os.path.basename(suite)}", flush=True)
            if a.dry_run:
                continue
            if not os.path.isfile(row_path):  # the suite's row beside its model: what --update merges into
                copy_row(suite, row_path)
            seed_row = os.path.join(out, "models", os.path.basename(row_path))
            start = time.time()
            update(ckpt, row["episodes"], suite[:-5] + ".log", seed_row if os.path.isfile(seed_row) else None)
            copy_row(row_path, suite)
            git_commit([suite, suite[:-5] + ".log", row_path, row_path[:-5] + ".md"],
                       f"study {study}: median seed's MAD and PGD columns with the attack-strength defaults "
                       f"({time.time() - start:.0f}s)", repo=repo)
            touched = True
        if touched:
            subprocess.run([sys.executable, os.path.join(ROOT, "results.py"), "--sweep", out], check=True)
            git_commit([os.path.join(out, "results")], f"study {study}: tables and figures with the re-run columns",
                       repo=repo)


if __name__ == "__main__":
    main()
