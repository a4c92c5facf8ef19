"""Aggregate a sweep (sweep.py) into the paper's Table 1 layout and figures.

    python results.py --sweep sweeps/default            # writes sweeps/default/results/{table.md,table.csv,*.png}

Table (table.md/.csv): one row per method and env, the median seed's returns under every attack (mean ± std over
the evaluation episodes) and its worst, the worst case across seeds (mean ± 95 % t-interval of each seed's worst
under the per-seed attacks), next to the paper's worst-case score (SPEC §8); a sweep run with --train-args (an
ablation, a smaller network) gets a last column that names them. per_seed.csv: every seed's clean
evaluation and its per-seed attack columns. Figures: clean-return training curves per env, mean ± std over seeds
(paper Fig. 2); worst_case.png, the median seed's worst and natural; natural_vs_worst.png, one dot per seed and
method (natural return against worst-case return), so a separation or its absence is visible at a glance.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os

# "pgd" is PGD (minQ) on SAC-family victims and PGD (minV) on PPO-family ones (attacks/pgd.py).
COLUMNS = [("natural", "Natural"), ("uniform", "Uniform"), ("mad", "MAD"), ("pgd", "PGD (minQ / minV)"), ("rs", "RS"),
           ("sa_rl_sac", "SA-RL (SAC)"), ("pa_ad_sac", "PA-AD (SAC)"), ("sa_rl_ppo", "SA-RL (PPO)"),
           ("pa_ad_ppo", "PA-AD (PPO)"), ("valt_soft_adv", "Own adversary")]
# Paper Table 1: worst score across attacks (mean ± std), quoted in SPEC §8.
PAPER_WORST = {
    "HalfCheetah-v4": {"sac": "-512 ± 67", "robust_sac": "2026 ± 417", "sac_ppo": "1823 ± 871",
                       "sac_valt_eps": "4647 ± 180", "sac_valt_soft": "3584 ± 61"},
    "Hopper-v4": {"ppo": "871 ± 146", "robust_ppo": "1528 ± 353", "atla_ppo": "1806 ± 665", "pa_atla_ppo": "1020 ± 134",
                  "wocar_ppo": "1575 ± 410",
                  "sac": "2979 ± 1", "robust_sac": "2947 ± 6", "sac_ppo": "3198 ± 2", "sac_valt_eps": "3212 ± 4",
                  "sac_valt_soft": "2986 ± 3"},
    "Walker2d-v4": {"sac": "337 ± 567", "robust_sac": "5180 ± 808", "sac_ppo": "1343 ± 178",
                    "sac_valt_eps": "3442 ± 2428", "sac_valt_soft": "4981 ± 1567"},
    "Ant-v4": {"sac": "-1953 ± 1213", "robust_sac": "~681", "sac_ppo": "-354 ± 468", "sac_valt_eps": "1487 ± 1176",
               "sac_valt_soft": "2757 ± 1297"},
}
LABELS = {"ppo": "PPO", "robust_ppo": "Robust-PPO", "atla_ppo": "ATLA-PPO", "pa_atla_ppo": "PA-ATLA-PPO",
          "wocar_ppo": "WocaR-PPO", "sac": "SAC", "robust_sac": "Robust-SAC", "sac_ppo": "SAC-PPO", "sac_valt_eps": "VALT-EPS-SAC",
          "sac_valt_soft": "VALT-SOFT-SAC"}


def sweep_variant(sweep: str) -> dict:
    """The --train-args the sweep's trials ran with (sweep.json): a variant of the method (an ablation), which
    the paper's number for the method does not describe."""
    path = os.path.join(sweep, "sweep.json")
    train_args = json.load(open(path)).get("train_args") if os.path.isfile(path) else None
    return json.loads(train_args) if train_args else {}


def paper_rows(variant: dict) -> tuple[dict, dict]:
    """(method -> paper row key, the variant left to name). A --train-args variant that IS a row of the paper's
    table is labelled and compared as that row: PA-ATLA-PPO is atla_ppo with pa=True (sweep.py runs it into its own
    --out)."""
    if variant.get("pa") is True:
        return {"atla_ppo": "pa_atla_ppo"}, {k: v for k, v in variant.items() if k != "pa"}
    return {}, variant


def load_sweep(sweep: str):
    trials = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(sweep, "trials", "*", "done.json")))]
    for t in trials:  # the per-seed attacks of sweep.py --seed-attacks, when present
        path = os.path.join(sweep, "models", f"{t['method']}__{t['env_id']}__s{t['seed']}_attacks.json")
        t["attacks"] = json.load(open(path)) if os.path.isfile(path) else None
    rows = {}
    for p in sorted(glob.glob(os.path.join(sweep, "attacks", "*.json"))):
        if p.endswith("_attacks.json"):  # eval_all's copy next to an attacked checkpoint, maybe an earlier median's
            continue
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


def seed_worst(trial) -> float | None:
    """The seed's worst mean across its per-seed attack columns (natural is not an attack)."""
    attacks = (trial.get("attacks") or {}).get("attacks", {})
    values = [a["mean"] for name, a in attacks.items() if name != "natural"]
    return min(values) if values else None


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t interval (0 for one value)."""
    import math

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}.get(n, 1.96)
    return mean, t * sd / math.sqrt(n)


def write_per_seed(trials, out_dir: str) -> None:
    names = [k for k, _ in COLUMNS if any(k in ((t.get("attacks") or {}).get("attacks", {})) for t in trials)]
    header = ["method", "env_id", "seed", "steps", "clean_eval_mean"] + names + ["worst", "worst_attack"]
    rows = [header]
    for t in sorted(trials, key=lambda t: (t["env_id"], t["method"], t["seed"])):
        attacks = (t.get("attacks") or {}).get("attacks", {})
        worst = seed_worst(t)
        worst_attack = min((n for n in attacks if n != "natural"), key=lambda n: attacks[n]["mean"]) if worst is not None else ""
        rows.append([t["method"], t["env_id"], t["seed"], t["global_step"], f"{t['eval_mean']:.1f}"] +
                    [f"{attacks[n]['mean']:.1f}" if n in attacks else "" for n in names] +
                    [f"{worst:.1f}" if worst is not None else "", worst_attack])
    with open(os.path.join(out_dir, "per_seed.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)


def write_table(trials, rows, out_dir: str, variant: dict | None = None) -> str:
    keys, variant = paper_rows(variant or {})
    used = [(k, label) for k, label in COLUMNS if any(k in r["attacks"] for r in rows.values())]
    header = ["Env", "Method", "Seeds", "Median seed", "Steps"] + [label for _, label in used] + \
             ["Worst (median seed)", "Worst across seeds (mean ± 95 % CI)", "Worst (paper)"] + \
             (["Run with (--train-args; the paper's number is the unmodified method's)"] if variant else [])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = [header]
    for (method, env_id), row in sorted(rows.items(), key=lambda kv: (kv[0][1], list(LABELS).index(kv[0][0])
                                                                      if kv[0][0] in LABELS else 99)):
        seeds = [t for t in trials if t["method"] == method and t["env_id"] == env_id]
        stem = os.path.splitext(os.path.basename(row["ckpt"]))[0]  # attacks/<trial>.pt, or trials/<trial>/model.pt
        median = (stem if "__s" in stem else os.path.basename(os.path.dirname(row["ckpt"]))).split("__s")[-1]
        paper_row = keys.get(method, method)
        cells = [env_id, LABELS.get(paper_row, paper_row), str(len(seeds)), median, str(row["global_step"])]
        for key, _ in used:
            a = row["attacks"].get(key)
            cells.append(f"{a['mean']:.0f} ± {a['std']:.0f}" if a else "–")
        worst = row.get("worst")
        cells.append(f"{worst['mean']:.0f} ± {worst['std']:.0f}" if worst else "–")
        per_seed = [w for w in (seed_worst(t) for t in seeds) if w is not None]
        if per_seed:
            mean, half = mean_ci95(per_seed)
            cells.append(f"{mean:.0f} ± {half:.0f} (n={len(per_seed)})")
        else:
            cells.append("–")
        cells.append(PAPER_WORST.get(env_id, {}).get(paper_row, "–"))
        if variant:
            cells.append(", ".join(f"{k}={v}" for k, v in variant.items()))
        md.append("| " + " | ".join(cells) + " |")
        csv_rows.append(cells)
    with open(os.path.join(out_dir, "table.csv"), "w", newline="") as f:
        csv.writer(f).writerows(csv_rows)
    text = "\n".join(md)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    return text


def load_checkpoint_rows(sweep: str) -> list[dict]:
    """Attack rows of the models kept during training (sweep.py --slim-every), sorted by trial and step."""
    import re

    rows = []
    for path in glob.glob(os.path.join(sweep, "models", "checkpoints", "*_step*_attacks.json")):
        match = re.fullmatch(r"(.+)__(.+)__s(\d+)_step(\d+)_attacks\.json", os.path.basename(path))
        if not match:  # not a kept model's row (sweep.py names them <method>__<env>__s<seed>_step<N>)
            print(f"skipped {path}: not <method>__<env>__s<seed>_step<N>_attacks.json")
            continue
        method, env_id, seed, step = match.groups()
        rows.append({**json.load(open(path)), "method": method, "env_id": env_id, "seed": int(seed),
                     "step": int(step)})
    return sorted(rows, key=lambda r: (r["env_id"], r["method"], r["seed"], r["step"]))


OVER_TRAINING = ["natural", "uniform", "mad", "pgd"]


def share_of_natural(row: dict, name: str) -> float | None:
    """attacked / natural mean return; None without both, or when natural <= 0 (the ratio then means nothing)."""
    attacks = row["attacks"]
    natural = attacks.get("natural", {}).get("mean")
    if "mean" not in attacks.get(name, {}) or natural is None or natural <= 0:
        return None
    return attacks[name]["mean"] / natural


def write_over_training(rows: list[dict], out_dir: str) -> str:
    """over_training.csv: each kept model's attack means, its worst (natural excluded) and the share of natural
    kept under each attack."""
    path = os.path.join(out_dir, "over_training.csv")
    cell = lambda v, digits=1: "" if v is None else f"{v:.{digits}f}"  # noqa: E731
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "env_id", "seed", "step", *OVER_TRAINING, "worst", "worst_attack",
                    *[f"{n}_share_of_natural" for n in OVER_TRAINING[1:]]])
        for r in rows:
            w.writerow([r["method"], r["env_id"], r["seed"], r["step"],
                        *[cell(r["attacks"].get(n, {}).get("mean")) for n in OVER_TRAINING],
                        cell((r.get("worst") or {}).get("mean")), (r.get("worst") or {}).get("attack", ""),
                        *[cell(share_of_natural(r, n), 3) for n in OVER_TRAINING[1:]]])
    return path


def write_over_training_table(rows: list[dict], out_dir: str) -> str:
    """over_training.md: the same models by step, methods side by side at each step; return mean ± std over the
    episodes, and under each attack the share of natural it keeps."""
    def cell(r: dict, name: str) -> str:
        a = r["attacks"].get(name)
        if a is None or "mean" not in a:
            return "–"
        share = share_of_natural(r, name) if name != "natural" else None
        return f"{a['mean']:.0f} ± {a.get('std', 0.0):.0f}" + ("" if share is None else f" ({100 * share:.0f} %)")

    order = lambda r: (r["env_id"], r["step"], list(LABELS).index(r["method"]) if r["method"] in LABELS else 99,  # noqa: E731
                       r["seed"])
    lines = ["| env | step | method | seed | " + " | ".join(label for name, label in COLUMNS if name in OVER_TRAINING) +
             " | worst |", "|" + "---|" * (5 + len(OVER_TRAINING))]
    for r in sorted(rows, key=order):
        worst = r.get("worst") or {}
        lines.append(f"| {r['env_id']} | {r['step']:,} | {LABELS.get(r['method'], r['method'])} | {r['seed']} | " +
                     " | ".join(cell(r, n) for n in OVER_TRAINING) +
                     (f" | {worst['mean']:.0f} ({worst.get('attack', '?')}) |" if "mean" in worst else " | – |"))
    path = os.path.join(out_dir, "over_training.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def plot_over_training(rows: list[dict], out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.lines import Line2D

    envs = sorted({r["env_id"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=lambda m: list(LABELS).index(m) if m in LABELS else 99)
    fig, axes = plt.subplots(len(envs), 2, figsize=(13, 4 * len(envs)), squeeze=False)
    key: dict = {}  # one legend entry per trial: a method's colour, seeds after the first with hollow markers
    for (ax_return, ax_share), env_id in zip(axes, envs):
        trials = sorted({(r["method"], r["seed"]) for r in rows if r["env_id"] == env_id},
                        key=lambda t: (methods.index(t[0]), t[1]))
        first_seed = {}
        for method, seed in trials:
            first_seed.setdefault(method, seed)
            points = [r for r in rows if (r["env_id"], r["method"], r["seed"]) == (env_id, method, seed)]
            steps, name = [r["step"] for r in points], f"{LABELS.get(method, method)} s{seed}"
            look = dict(color=f"C{methods.index(method)}")
            if seed != first_seed[method]:
                look.update(markerfacecolor="none", alpha=0.7)
            key.setdefault(name, Line2D([], [], marker="o", **look))
            ax_return.plot(steps, [r["attacks"].get("natural", {}).get("mean", float("nan")) for r in points], "o-",
                           **look)
            ax_return.plot(steps, [(r.get("worst") or {}).get("mean", float("nan")) for r in points], "x--", **look)
            for attack, style in (("mad", "s:"), ("pgd", "x--")):
                shares = [(r["step"], share_of_natural(r, attack)) for r in points]
                shares = [(s, v) for s, v in shares if v is not None]
                ax_share.plot([s for s, _ in shares], [v for _, v in shares], style, **look)
        ax_return.set_title(f"{env_id}: natural (o, solid) and the worst attack column (x, dashed)")
        ax_return.set_ylabel("return (mean over the episodes)")
        ax_share.set_title(f"{env_id}: share of natural kept, MAD (squares, dotted) and PGD (x, dashed)")
        ax_share.set_ylabel("attacked / natural")
        low, high = ax_share.get_ylim()
        ax_share.set_ylim(min(0.0, low), max(1.05, high))
        for ax in (ax_return, ax_share):
            ax.set_xlabel("agent steps (thousands)")
            ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}")
            ax.title.set_fontsize(9)
    fig.legend(list(key.values()), list(key), loc="center right", fontsize=8)  # outside the axes: no data hidden
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    path = os.path.join(out_dir, "robustness_over_training.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_figures(sweep: str, trials, rows, out_dir: str, variant: dict | None = None) -> list[str]:
    import matplotlib

    keys, _ = paper_rows(variant or {})
    label = lambda method: LABELS.get(keys.get(method, method), method)  # noqa: E731

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
            ax.plot(steps, mean, label=f"{label(method)} ({len(curves)} seeds)")
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
    seeded = [t for t in trials if seed_worst(t) is not None]
    if seeded:
        envs = sorted({t["env_id"] for t in seeded})
        fig, axes = plt.subplots(1, len(envs), figsize=(5.5 * len(envs), 4.5), squeeze=False)
        for ax, env_id in zip(axes[0], envs):
            for i, method in enumerate(m for m in LABELS if any(t["method"] == m and t["env_id"] == env_id for t in seeded)):
                pts = [(t["attacks"]["attacks"]["natural"]["mean"] if "natural" in t["attacks"]["attacks"]
                        else t["eval_mean"], seed_worst(t)) for t in seeded
                       if t["method"] == method and t["env_id"] == env_id]
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"{label(method)} ({len(pts)})",
                           color=f"C{i}", s=40, alpha=0.8)
            lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
            ax.plot(lims, lims, "k:", lw=0.8, label="worst = natural")
            ax.set_xlabel("natural return (per seed)")
            ax.set_ylabel("worst return across attacks (per seed)")
            ax.set_title(f"{env_id}: one dot per seed")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "natural_vs_worst.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    rows = {k: r for k, r in rows.items() if r.get("worst")}
    if rows:
        envs = sorted({env for _, env in rows})
        fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 4), squeeze=False)
        for ax, env_id in zip(axes[0], envs):
            items = [(m, r) for (m, e), r in rows.items() if e == env_id]
            items.sort(key=lambda kv: list(LABELS).index(kv[0]) if kv[0] in LABELS else 99)
            names = [label(m) for m, _ in items]
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
    kept = load_checkpoint_rows(a.sweep)
    if not trials and not kept:
        p.error(f"no finished trials under {a.sweep}/trials and no attacked models under {a.sweep}/models/checkpoints")
    out_dir = a.out or os.path.join(a.sweep, "results")
    os.makedirs(out_dir, exist_ok=True)
    if kept:
        print("wrote", write_over_training(kept, out_dir))
        print("wrote", write_over_training_table(kept, out_dir))
        if not a.no_figures:
            try:
                print("wrote", plot_over_training(kept, out_dir))
            except ImportError:
                print("matplotlib is not installed: figures skipped (pip install -r requirements.txt)")
    if not trials:
        return
    write_per_seed(trials, out_dir)
    print(write_table(trials, rows, out_dir, sweep_variant(a.sweep)) if rows else "(no median-seed attack evaluations yet)")
    if not a.no_figures:
        try:
            for path in write_figures(a.sweep, trials, rows, out_dir, sweep_variant(a.sweep)):
                print("wrote", path)
        except ImportError:
            print("matplotlib is not installed: figures skipped (pip install -r requirements.txt)")


if __name__ == "__main__":
    main()
