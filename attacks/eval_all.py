"""Attack checkpoints with every attacker and print a row per checkpoint in the paper's Table 1 layout:
natural, uniform, MAD, PGD (minQ for SAC-family victims, minV for PPO-family ones), RS, SA-RL (SAC), PA-AD (SAC),
SA-RL (PPO), PA-AD (PPO), [own adversary],
worst (the minimum over the evaluated ATTACK columns: Natural is shown, not counted). Writes <ckpt stem>_attacks.json
(every attacker's settings, budget and search size included) and .md next to each checkpoint.

    python attacks/eval_all.py --ckpt runs/a/model.pt runs/b/model.pt --episodes 20
    python attacks/eval_all.py --ckpt runs/a/model.pt --attacks natural,uniform,mad,pgd
    python attacks/eval_all.py --ckpt runs/a/model.pt --search quick --rs-grid quick          # CPU-sized searches
    python attacks/eval_all.py --ckpt runs/a/model.pt --attacks mad,pgd --update              # re-run two columns

--update keeps the other columns of the existing <ckpt stem>_attacks.json (its episodes, seed, eps and victim mode
must be this run's) and records each replaced column's old mean and settings under "replaced". --reuse copies a
column from another row of a byte-identical checkpoint instead of re-running it, when that row used the same
episodes, seed, eps, victim mode and the column's settings (only the evaluation-only attacks: natural, uniform, mad,
pgd, whose result is a function of exactly those).

Every attacker sees the same episode seeds, so the columns of a row are comparable.
"""
from __future__ import annotations

import copy
import filecmp
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Optional

import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks import estimate, mad, natural, pa_ad, pgd, robust_sarsa, sa_rl, uniform, valt_soft_adv, video  # noqa: E402
from attacks.common import (AttackError, EvalArgs, SaveDirArgs, adapt, parse, run_cli, unavailable,  # noqa: E402
                            paths_absolute_from, paths_relative_to, victim_from_args, victim_identity,
                            write_json_atomically)
from attacks.learned import LearnedArgs  # noqa: E402

# attack name -> (column label, module, overrides of the shared arguments)
ATTACKS = {
    "natural": ("Natural", natural, {}),
    "uniform": ("Uniform", uniform, {}),
    "mad": ("MAD", mad, {}),
    "pgd": ("PGD (minQ)", pgd, {}),  # "PGD (minV)" on a PPO-family victim: the column follows the victim's critic
    "rs": ("RS", robust_sarsa, {}),
    "sa_rl_sac": ("SA-RL (SAC)", sa_rl, {"algo": "sac"}),
    "pa_ad_sac": ("PA-AD (SAC)", pa_ad, {"algo": "sac"}),
    "sa_rl_ppo": ("SA-RL (PPO)", sa_rl, {"algo": "ppo"}),
    "pa_ad_ppo": ("PA-AD (PPO)", pa_ad, {"algo": "ppo"}),
    "valt_soft_adv": ("Own adversary", valt_soft_adv, {}),
}
DEFAULT_ATTACKS = [name for name in ATTACKS if name != "valt_soft_adv"]  # own adversary added when present


@dataclass(kw_only=True)
class Args(pa_ad.PAArgs, LearnedArgs, SaveDirArgs, robust_sarsa.Args, mad.Args, pgd.Args, EvalArgs):
    """Every attack's flags, each declared by its attack (pgd.Args, mad.Args, robust_sarsa.Args, learned.LearnedArgs,
    pa_ad.PAArgs), and the table's."""

    ckpt: tuple[str, ...]  # one or more checkpoints, SB3 .zip or CleanRL files (one table row each)
    attacks: Annotated[str, tyro.conf.arg(help=f"comma list of {', '.join(ATTACKS)} or all")] = "all"
    out: Optional[str] = None  # also write the combined table (Markdown) here
    video: bool = False  # also <ckpt stem>_natural_vs_<attack>.mp4: episode 1, natural and under the row's worst attack
    update: bool = False  # merge into the existing <ckpt stem>_attacks.json: other columns kept, replaced ones recorded
    reuse: Optional[str] = None  # an _attacks.json of a byte-identical checkpoint: its matching columns are copied


REUSABLE = ("natural", "uniform", "mad", "pgd")  # no training, no cache: the column is a function of the row's settings
ROW_SETTINGS = ("episodes", "seed", "eps", "stochastic")  # what every column of a row shares
SAME_MODEL = ("method", "env_id", "global_step", "source", "victim_sha1")  # absent in older rows: not compared


def parse_attacks(spec: str) -> list[str]:
    if spec == "all":
        return list(DEFAULT_ATTACKS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise AttackError(f"unknown attacker(s) {unknown or spec!r}; choose from {', '.join(ATTACKS)}")
    return names


def evaluate_checkpoint(path: str, names: list[str], args, reuse: Optional[dict] = None) -> dict:
    victim = victim_from_args(path, args)
    if args.video:  # no renderer: one line now, not after hours of attacks
        video.rendering_env(victim).close()
    if args.attacks == "all" and valt_soft_adv.has_adversary(victim):
        names = names + ["valt_soft_adv"]
    if "pgd" in names:
        print(f"[{victim.method} {victim.env_id}] {victim.kind.upper()}-kind victim: the PGD column is "
              f"{pgd.column(victim)}", flush=True)
    row = {"ckpt": path, "method": victim.method, "kind": victim.kind, "env_id": victim.env_id, "eps": victim.eps,
           "eps_units": victim.eps_units, "global_step": victim.ckpt["global_step"], "episodes": args.episodes,
           "seed": args.seed, "stochastic": args.stochastic, "victim_sha1": victim_identity(victim)["victim_sha1"],
           "search": search_label(args, names), "attacks": {}, **({"source": victim.ckpt["source"]}
                                                                 if "source" in victim.ckpt else {})}
    if args.update:  # before hours of attacks, not after
        check_update(os.path.splitext(path)[0], row)
    used_args, prepared = {}, []  # each attack's arguments (for the video); the attacks that will run
    for name in names:
        label, module, overrides = ATTACKS[name]
        label = pgd.column(victim) if name == "pgd" else label
        reason = unavailable(name, victim)
        if reason:  # the victim lacks what this attack needs: a marked cell, never a substitute
            row["attacks"][name] = {"column": label, "n/a": reason}
            continue
        attack_args = copy.copy(args)
        for key, value in overrides.items():
            setattr(attack_args, key, value)
        adapted = adapt(name, victim, attack_args)
        settings = attack_settings(name, attack_args, victim.kind)
        earlier = reusable_column(reuse, name, settings, row) if reuse else None
        used_args[name] = attack_args
        prepared.append((name, label, module, attack_args, adapted, settings, earlier))
    estimate.announce([(name, attack_args) for name, _, _, attack_args, _, _, earlier in prepared if earlier is None],
                      victim)
    for i, name in enumerate(names):
        if name in row["attacks"]:
            print(f"[{victim.method} {victim.env_id}] attack {i + 1}/{len(names)}: {row['attacks'][name]['column']} "
                  f"{row['attacks'][name]['n/a']}", flush=True)
    for name, label, module, attack_args, adapted, settings, earlier in prepared:
        i = names.index(name)
        if earlier is not None:
            row["attacks"][name] = {**earlier, "reused_from": args.reuse}
            print(f"[{victim.method} {victim.env_id}] {label}: {earlier['mean']:.1f} ± {earlier['std']:.1f} "
                  f"(reused from {args.reuse})", flush=True)
            continue
        print(f"[{victim.method} {victim.env_id}] attack {i + 1}/{len(names)}: {label} ...", flush=True)
        for flag, note in adapted.items():
            print(f"[{victim.method} {victim.env_id}] {label}: --{flag.replace('_', '-')} {note}", flush=True)
        start = time.time()
        result = module.evaluate(victim, attack_args)
        stats = result["stats"]
        row["attacks"][name] = {"column": label, "mean": stats.mean, "std": stats.std, "returns": stats.returns,
                                "seconds": round(time.time() - start, 2),  # training (learned attackers) + evaluation
                                "settings": settings,
                                **({"adapted": adapted} if adapted else {}),
                                **{k: v for k, v in result.items() if k != "stats"}}
        print(f"[{victim.method} {victim.env_id}] {label}: {stats.mean:.1f} ± {stats.std:.1f} "
              f"({time.time() - start:.1f}s)", flush=True)
    row["worst"] = worst_of(row["attacks"])
    if args.video and row["worst"]:
        name = row["worst"]["attack"]
        module, replay_args = ATTACKS[name][1], copy.copy(used_args[name])
        if name == "rs":  # a grid of critics: the video replays the strongest one
            module = robust_sarsa.Replay(victim, replay_args, row["attacks"][name]["strongest"])
        if "attacker_path" in row["attacks"][name]:  # a learned column: its strongest attacker, no cache rewritten
            replay_args.load = row["attacks"][name]["attacker_path"]
        row["video"] = video.natural_vs_attack(victim, natural, module, row["attacks"][name]["column"],
                                               replay_args, f"{os.path.splitext(path)[0]}_natural_vs_{name}.mp4")
        print(f"[{victim.method} {victim.env_id}] video: {row['video']['path']}", flush=True)
    return row


def reusable_column(earlier: dict, name: str, settings: dict, row: dict) -> Optional[dict]:
    """The earlier row's column `name` when it was produced exactly as this run would produce it, else None."""
    column = earlier["attacks"].get(name)
    if name not in REUSABLE or not column or "mean" not in column or column.get("settings") != settings:
        return None
    if any(earlier.get(key, ROW_DEFAULTS.get(key)) != row[key] for key in ROW_SETTINGS) or other_model(earlier, row):
        return None
    return column


def other_model(earlier: dict, row: dict) -> Optional[str]:
    """Why `earlier` was not made on the model of `row` (its content, task, step, how it was loaded), or None."""
    for key in SAME_MODEL:
        if key in earlier and earlier[key] != row.get(key):
            return f"{key} {earlier[key]!r} there, {row.get(key)!r} here"
    return None


ROW_DEFAULTS = {"seed": 0, "stochastic": False}  # rows written before these keys were recorded used these


def check_reuse(path: str, reuse_path: str) -> dict:
    try:
        earlier = json.load(open(reuse_path))
    except (OSError, ValueError) as e:
        raise AttackError(f"--reuse {reuse_path}: not a readable attack row ({e})")
    source = earlier.get("ckpt", "")
    if not os.path.isfile(source):  # rows record the path they were run on; a moved study finds it beside the row
        source = os.path.join(os.path.dirname(reuse_path), os.path.basename(source))
    if not os.path.isfile(source) or not filecmp.cmp(source, path, shallow=False):
        raise AttackError(f"--reuse {reuse_path}: its checkpoint ({earlier.get('ckpt')}) is not byte-identical to {path}")
    return earlier


def check_update(stem: str, row: dict) -> dict:
    """--update's existing row, if this run's columns may join it: same model, same episodes, seed, eps, mode."""
    try:
        existing = paths_absolute_from(json.load(open(f"{stem}_attacks.json")), os.path.dirname(os.path.abspath(stem)))
    except (OSError, ValueError) as e:
        raise AttackError(f"--update: no readable {stem}_attacks.json to update ({e})")
    for key in ROW_SETTINGS:
        if existing.get(key, ROW_DEFAULTS.get(key)) != row[key]:
            raise AttackError(f"--update: {stem}_attacks.json has {key}={existing.get(key)!r}, this run {row[key]!r}; "
                              f"columns of one row must share it (run without --update for a new row)")
    why = other_model(existing, row)
    if why:
        raise AttackError(f"--update: {stem}_attacks.json was made on another model ({why})")
    return existing


def merge_into(stem: str, row: dict) -> dict:
    """--update: the new columns replace the existing row's, which keeps the rest; the old values stay on record."""
    existing = check_update(stem, row)
    merged = {**existing, **{k: row[k] for k in ("ckpt", "seed", "stochastic", "victim_sha1")},
              "attacks": dict(existing["attacks"])}
    replaced = merged.setdefault("replaced", {})
    for name, column in row["attacks"].items():
        old = existing["attacks"].get(name)
        if old and "mean" in old:
            replaced.setdefault(name, []).append({k: old[k] for k in ("mean", "std", "settings") if k in old})
        merged["attacks"][name] = column
    merged["search"] = "; ".join(p for p in dict.fromkeys(existing.get("search", "").split("; ") +
                                                           row["search"].split("; ")) if p and p != "no search") \
        or "no search"
    merged["worst"] = worst_of(merged["attacks"])
    return merged


def attack_settings(name: str, args, kind: str = "sac") -> dict:
    """What produced a column, so a reader can tell a CPU-quick row from a paper-scale one."""
    together = {"episodes": "side by side"}  # common.rollout_side_by_side: random draws shared by the batch
    if name in ("natural", "uniform"):
        return together
    if name == "mad":
        return {"steps": args.mad_steps, "step": f"{args.mad_step_scale:g} eps/steps", "restarts": args.mad_restarts,
                "noise": "sqrt(2 step)/(i+2)", **together}
    if name == "pgd":
        return {"objective": "min V(s~)" if kind == "ppo" else "min mean_j Q_j(s, mu(s~))", "steps": args.pgd_steps,
                "restarts": args.pgd_restarts, "start": args.pgd_start, "step": f"{args.pgd_step_scale:g} eps/steps",
                **together}
    # rs: its result carries the grid and budgets ("search"), written next to it
    if name in ("sa_rl_sac", "pa_ad_sac", "sa_rl_ppo", "pa_ad_ppo"):
        out = {"search": args.search, "algo": args.algo, "budget": args.attack_budget or "preset default",
               "seeds": args.seeds or "preset default"}
        if name.startswith("pa_ad"):
            out.update(pa_steps=args.pa_steps, pa_restarts=args.pa_restarts,
                       pa_step=f"{args.pa_step_scale:g} -> {args.pa_final_step_scale:g} eps/steps (geometric)")
        return out
    return {}


def search_label(args, names: list[str]) -> str:
    """One line for the table: the search preset of the searched columns (RS grid, learned attackers)."""
    parts = []
    if "rs" in names:
        rs_action = "" if args.rs_action == "both" else f", PPO input {args.rs_action}"
        parts.append(f"RS {'explicit' if args.rs_settings else args.rs_grid}{rs_action}")
    if any(n in names for n in ("sa_rl_sac", "pa_ad_sac", "sa_rl_ppo", "pa_ad_ppo")):
        budget = f", {args.attack_budget} steps" if args.attack_budget else ""
        parts.append(f"learned {args.search}{budget}")
    return "; ".join(parts) or "no search"


def worst_of(attacks: dict) -> Optional[dict]:
    """The paper's headline: the lowest mean return across the ATTACK columns (natural is not an attack)."""
    attacked = [n for n in attacks if n != "natural" and "mean" in attacks[n]]  # n/a cells have no return
    if not attacked:
        return None
    name = min(attacked, key=lambda n: attacks[n]["mean"])
    return {"attack": name, "mean": attacks[name]["mean"], "std": attacks[name]["std"]}


def markdown_table(rows: list[dict]) -> str:
    names = [n for n in ATTACKS if any(n in r["attacks"] for r in rows)]
    labels = {n: " / ".join(dict.fromkeys(r["attacks"][n]["column"] for r in rows if n in r["attacks"])) for n in names}
    header = ["Checkpoint", "Method", "Env", "eps"] + [labels[n] for n in names] + ["Worst", "Search"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        stem = os.path.splitext(os.path.basename(r["ckpt"]))[0]  # runs/<run>/model.pt -> <run>; models/<trial>.pt -> <trial>
        label = os.path.basename(os.path.dirname(os.path.abspath(r["ckpt"]))) if stem == "model" else stem
        cells = [label, r["method"], r["env_id"],
                 f"{r['eps']:g}" + (" (raw)" if r.get("eps_units") == "raw" else "")]
        for n in names:
            a = r["attacks"].get(n)
            cells.append("–" if not a else a["n/a"] if "n/a" in a else f"{a['mean']:.0f} ± {a['std']:.0f}")
        w = r["worst"]
        cells.append(f"**{w['mean']:.0f} ± {w['std']:.0f}** ({r['attacks'][w['attack']]['column']})" if w else "– (no attack)")
        cells.append(r.get("search", "–"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse(Args, __doc__, argv)
    if not args.ckpt:
        raise AttackError("--ckpt needs at least one checkpoint")
    names = parse_attacks(args.attacks)
    if args.episodes <= 0:
        raise AttackError("--episodes must be positive")
    if args.update and args.video:
        raise AttackError("--video films the worst of the whole row: run it without --update")
    if args.reuse and len(args.ckpt) != 1:
        raise AttackError("--reuse takes one --ckpt (the row it reuses belongs to one checkpoint)")
    for path in args.ckpt if args.update else ():  # before hours of attacks, not after
        if not os.path.isfile(f"{os.path.splitext(path)[0]}_attacks.json"):
            raise AttackError(f"--update: {os.path.splitext(path)[0]}_attacks.json does not exist (run without --update)")
    reuse = check_reuse(args.ckpt[0], args.reuse) if args.reuse else None
    rows = []
    for path in args.ckpt:
        stem = os.path.splitext(path)[0]
        row = evaluate_checkpoint(path, names, args, reuse)
        if args.update:
            row = merge_into(stem, row)
        rows.append(row)
        write_json_atomically(f"{stem}_attacks.json", paths_relative_to(row, os.path.dirname(os.path.abspath(stem))))
        with open(f"{stem}_attacks.md", "w") as f:
            f.write(markdown_table([row]) + "\n")
    table = markdown_table(rows)
    print("\n" + table)
    for r in rows:
        print(f"seconds per attacker ({r['ckpt']}): " +
              ", ".join(f"{a['column']} {a['seconds']:.1f}" for n, a in r["attacks"].items() if "seconds" in a))
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    run_cli(main)
