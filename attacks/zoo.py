"""The catalogue of pretrained victims: every slim model committed under results/ (its method, task, training steps,
seed, attack radius, clean return and worst return under the per-seed attacks, with the settings that produced
them) and the one command that attacks it. Writes results/ZOO.md.

    python attacks/zoo.py                          # scans results/*/models/ (and models/checkpoints/)
    python attacks/zoo.py --results my_studies --out my_studies/ZOO.md
"""
from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import AttackError, parse, run_cli  # noqa: E402

LABELS = {"sac": "SAC", "robust_sac": "Robust-SAC", "sac_ppo": "SAC-PPO", "valt_eps": "VALT-EPS-SAC",
          "valt_soft": "VALT-SOFT-SAC", "ppo": "PPO", "robust_ppo": "Robust-PPO", "atla_ppo": "ATLA-PPO",
          "atla_ppo_pa": "PA-ATLA-PPO", "wocar_ppo": "WocaR-PPO"}  # by the checkpoint's `method`


@dataclass
class Args:
    results: str = "results"  # the folder of studies to scan
    out: str = "results/ZOO.md"


def settings_text(name: str, settings: dict) -> str:
    """An attack's recorded optimiser settings in a few words (the JSON has them all)."""
    words = [f"{settings['steps']} steps of {settings['step']}"] if "steps" in settings else []
    words += [f"{settings['restarts']} restarts"] if "restarts" in settings else []
    return f"{name} ({', '.join(words)})" if words else name


def entry(path: str, root: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, a git-lfs pointer, not a torch file
        raise AttackError(f"{path} is not a readable checkpoint ({type(e).__name__})")
    if not isinstance(ckpt, dict) or "checkpoint_format" not in ckpt:
        raise AttackError(f"{path} is not a checkpoint of this project")
    method = ckpt["method"] + ("_pa" if ckpt.get("args", {}).get("pa") else "")
    row = {"path": os.path.relpath(path, os.path.dirname(root) or "."), "method": method, "env_id": ckpt["env_id"],
           "steps": ckpt["global_step"], "seed": ckpt.get("args", {}).get("seed"), "eps": ckpt.get("eps"),
           "study": os.path.relpath(path, root).split(os.sep)[0],
           "clean": ckpt.get("summary", {}).get("eval_mean"), "attacks": None}
    report = os.path.splitext(path)[0] + "_attacks.json"
    if os.path.isfile(report):
        with open(report) as f:
            attacks = json.load(f)
        ran = {name: a for name, a in attacks["attacks"].items() if "mean" in a}  # an n/a cell has no return
        row["attacks"] = {name: a["mean"] for name, a in ran.items()}
        row["episodes"], row["worst"] = attacks["episodes"], attacks["worst"]
        row["settings"] = "; ".join(settings_text(name, a.get("settings", {})) for name, a in ran.items())
    return row


def table(rows: list[dict], out_dir: str, root: str) -> str:
    lines = ["| model | study | method | task | steps | seed | ε | natural | worst (attack) | attacks, episodes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        label = LABELS.get(r["method"], r["method"])
        if r["attacks"] is None:
            natural = f"{r['clean']:.0f} (training's last evaluation)" if r["clean"] is not None else "–"
            worst, attacked = "not attacked yet", "–"
        else:
            natural = f"{r['attacks']['natural']:.0f}" if "natural" in r["attacks"] else "–"
            worst = f"{r['worst']['mean']:.0f} ({r['worst']['attack']})" if r["worst"] else "– (no attack ran)"
            attacked = f"{r['settings']}; {r['episodes']} episodes"
        readme = os.path.relpath(os.path.join(root, r["study"], "README.md"), out_dir)
        lines.append(f"| `{r['path']}` | [{r['study']}]({readme}) | {label} | {r['env_id']} | {r['steps']:,} | {r['seed']} | {r['eps']} | "
                     f"{natural} | {worst} | {attacked} |")
    return "\n".join(lines)


def main() -> None:
    args = parse(Args, __doc__)
    root = os.path.normpath(args.results)
    paths = sorted(glob.glob(os.path.join(root, "*", "models", "*.pt"))
                   + glob.glob(os.path.join(root, "*", "models", "checkpoints", "*.pt")))
    if not paths:
        raise AttackError(f"no slim models under {root}/*/models/")
    rows = [entry(p, root) for p in paths]
    text = f"""# Pretrained victims

Every slim model committed under `{root}/` (networks, normalizer and attack radius: what an attack needs; no
optimizer or replay state), listed by `python attacks/zoo.py`. "natural" and "worst" are the per-seed attacks
run on that model (the attacks named, with the settings recorded in its `*_attacks.json`; ε in normalized
observation units); a study's README has the full suite on its median seed. Attack any of them with every attack:

```bash
python attacks/eval_all.py --ckpt <model> --search quick --rs-grid quick      # CPU-sized; drop both for the paper's
```

{table(rows, os.path.dirname(os.path.abspath(args.out)), os.path.abspath(root))}
"""
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"[zoo] {len(rows)} models -> {args.out}")


if __name__ == "__main__":
    run_cli(main)
