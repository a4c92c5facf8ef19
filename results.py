"""Aggregate a sweep (sweep.py) into the paper's Table 1 layout and figures.

    python results.py --sweep sweeps/default            # writes sweeps/default/results/{table.md,table.csv,*.png}

Table: one row per method and env, the median seed's returns under every attack (mean ± std over the
evaluation episodes) and the worst, next to the paper's worst-case score (SPEC §8). Figures: clean-return
training curves per env, mean ± std over seeds (paper Fig. 2), and a bar chart of worst-case scores.
matplotlib is needed only for the figures.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os

COLUMNS = [("natural", "Natural"), ("uniform", "Uniform"), ("mad", "MAD"), ("pgd", "PGD (minQ)"), ("rs", "RS"),
           ("sa_rl_sac", "SA-RL (SAC)"), ("pa_ad_sac", "PA-AD (SAC)"), ("sa_rl_ppo", "SA-RL (PPO)"),
           ("pa_ad_ppo", "PA-AD (PPO)"), ("valt_soft_adv", "Own adversary")]
# Paper Table 1: worst score across attacks (mean ± std), quoted in SPEC §8.
PAPER_WORST = {
    "HalfCheetah-v4": {"sac": "-512 ± 67", "robust_sac": "2026 ± 417", "sac_ppo": "1823 ± 871",
                       "sac_valt_eps": "4647 ± 180", "sac_valt_soft": "3584 ± 61"},
    "Hopper-v4": {"sac": "2979 ± 1", "robust_sac": "2947 ± 6", "sac_ppo": "3198 ± 2", "sac_valt_eps": "3212 ± 4",
                  "sac_valt_soft": "2986 ± 3"},
    "Walker2d-v4": {"sac": "337 ± 567", "robust_sac": "5180 ± 808", "sac_ppo": "1343 ± 178",
                    "sac_valt_eps": "3442 ± 2428", "sac_valt_soft": "4981 ± 1567"},
    "Ant-v4": {"sac": "-1953 ± 1213", "robust_sac": "~681", "sac_ppo": "-354 ± 468", "sac_valt_eps": "1487 ± 1176",
               "sac_valt_soft": "2757 ± 1297"},
}
LABELS = {"sac": "SAC", "robust_sac": "Robust-SAC", "sac_ppo": "SAC-PPO", "sac_valt_eps": "VALT-EPS-SAC",
          "sac_valt_soft": "VALT-SOFT-SAC"}


def load_sweep(sweep: str):
    trials = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(sweep, "trials", "*", "done.json")))]
    rows = {}
    for p in sorted(glob.glob(os.path.join(sweep, "attacks", "*.json"))):
        row = json.load(open(p))
        method = os.path.basename(p).split("__")[0]
        rows[(method, row["env_id"])] = row
    return trials, rows


def eval_curve(trial_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(os.path.join(trial_dir, "runs", "*"))
    points = {}
    for run_dir in files:
        acc = EventAccumulator(run_dir)
        acc.Reload()
        if "eval/return" in acc.Tags().get("scalars", []):
            for e in acc.Scalars("eval/return"):
                points[e.step] = e.value  # a resumed run may repeat a step: keep the last value
    return sorted(points.items())


def write_table(trials, rows, out_dir: str) -> str:
    used = [(k, label) for k, label in COLUMNS if any(k in r["attacks"] for r in rows.values())]
    header = ["Env", "Method", "Seeds", "Median seed", "Steps"] + [label for _, label in used] + \
             ["Worst (ours)", "Worst (paper)"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = [header]
    for (method, env_id), row in sorted(rows.items(), key=lambda kv: (kv[0][1], list(LABELS).index(kv[0][0])
                                                                      if kv[0][0] in LABELS else 99)):
        seeds = [t for t in trials if t["method"] == method and t["env_id"] == env_id]
        median = os.path.basename(os.path.dirname(row["ckpt"])).split("__s")[-1]
        cells = [env_id, LABELS.get(method, method), str(len(seeds)), median, str(row["global_step"])]
        for key, _ in used:
            a = row["attacks"].get(key)
            cells.append(f"{a['mean']:.0f} ± {a['std']:.0f}" if a else "–")
        cells.append(f"{row['worst']['mean']:.0f} ± {row['worst']['std']:.0f}")
        cells.append(PAPER_WORST.get(env_id, {}).get(method, "–"))
        md.append("| " + " | ".join(cells) + " |")
        csv_rows.append(cells)
    with open(os.path.join(out_dir, "table.csv"), "w", newline="") as f:
        csv.writer(f).writerows(csv_rows)
    text = "\n".join(md)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    return text


def write_figures(sweep: str, trials, rows, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    for env_id in sorted({t["env_id"] for t in trials}):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in [m for m in LABELS if any(t["method"] == m and t["env_id"] == env_id for t in trials)]:
            curves = [eval_curve(os.path.join(sweep, "trials", f"{method}__{env_id}__s{t['seed']}"))
                      for t in trials if t["method"] == method and t["env_id"] == env_id]
            curves = [c for c in curves if c]
            if not curves:
                continue
            steps = sorted(set.intersection(*[set(s for s, _ in c) for c in curves]))
            values = np.array([[dict(c)[s] for s in steps] for c in curves])
            mean, std = values.mean(0), values.std(0)
            ax.plot(steps, mean, label=f"{LABELS[method]} ({len(curves)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel("environment steps (agent)")
        ax.set_ylabel("clean evaluation return")
        ax.set_title(env_id)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"curves_{env_id}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    if rows:
        envs = sorted({env for _, env in rows})
        fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 4), squeeze=False)
        for ax, env_id in zip(axes[0], envs):
            items = [(m, r) for (m, e), r in rows.items() if e == env_id]
            items.sort(key=lambda kv: list(LABELS).index(kv[0]) if kv[0] in LABELS else 99)
            names = [LABELS.get(m, m) for m, _ in items]
            ax.bar(names, [r["worst"]["mean"] for _, r in items], yerr=[r["worst"]["std"] for _, r in items],
                   color="tab:red", alpha=0.7, label="worst case")
            ax.scatter(names, [r["attacks"]["natural"]["mean"] if "natural" in r["attacks"] else np.nan
                               for _, r in items], color="k", zorder=3, label="natural")
            ax.set_title(f"{env_id}: worst case across attacks")
            ax.tick_params(axis="x", rotation=30)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, "worst_case.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True, help="output folder of sweep.py")
    p.add_argument("--out", default=None, help="default: <sweep>/results")
    p.add_argument("--no-figures", action="store_true")
    a = p.parse_args(argv)
    trials, rows = load_sweep(a.sweep)
    if not trials:
        p.error(f"no finished trials under {a.sweep}/trials")
    out_dir = a.out or os.path.join(a.sweep, "results")
    os.makedirs(out_dir, exist_ok=True)
    print(write_table(trials, rows, out_dir) if rows else "(no attack evaluations yet)")
    if not a.no_figures:
        try:
            for path in write_figures(a.sweep, trials, rows, out_dir):
                print("wrote", path)
        except ImportError:
            print("matplotlib is not installed: figures skipped (pip install -r benchmarks/requirements.txt)")


if __name__ == "__main__":
    main()
