"""How close does PGD on the victim's own critic come to the optimum of its objective?

For each victim, on the first --states states its deterministic policy visits (seeded), the mean objective drop
    SAC kinds, PGD (minQ): mean_j Q_j(s, mu(s)) - mean_j Q_j(s, mu(s~))
    PPO kinds, PGD (minV): V(s) - V(s~)
reached by projected signed-gradient descent over the eps-ball, swept over the step size (eps/100, eps/20, eps/10
and the common 2.5 eps/steps), the number of steps (10 ... --max-steps) and restarts (1, 5, 20; starts uniform in
the whole ball, the first restart in the step box as the references start). The reference is the best mean drop of
any configuration; a configuration row says how much of it it reaches, and the curve (drop vs steps per step-size
rule) shows where the optimiser stops improving. The attack suite's own PGD (attacks/pgd.py, its defaults or the
settings given) is measured on the same states.

    python benchmarks/pgd_convergence.py --ckpts tests/data/sac_halfcheetah_30k.pt tests/data/ppo_hopper_160k.pt \
        --out results/attack_strength/pgd_convergence.json --figure results/attack_strength/pgd_convergence.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from attacks.common import load_victim  # noqa: E402


def visited_states(victim, n: int, seed: int) -> torch.Tensor:
    """n normalized states of the victim's deterministic policy, consecutive from seeded episodes."""
    env, states, episode = victim.make_env(), [], 0
    while len(states) < n:
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done and len(states) < n:
            obs_n = victim.normalize(obs)
            states.append(obs_n)
            obs, _, terminated, truncated, _ = env.step(victim.act(obs_n.unsqueeze(0))[0].numpy())
            done = terminated or truncated
        episode += 1
    env.close()
    return torch.stack(states)


def objective_of(victim):
    """objective(s, s~) per state, the quantity PGD minimises (see the module docstring)."""
    if victim.kind == "ppo":
        return lambda obs, obs_tilde: victim.critic(obs_tilde).reshape(-1)
    return lambda obs, obs_tilde: victim.critic(obs, victim.actor.deterministic(obs_tilde)).mean(0)


def signed_pgd(objective, obs: torch.Tensor, eps: float, steps: int, step: float, restarts: int,
               checkpoints: tuple = ()) -> dict:
    """Per state, the lowest objective over `restarts` projected signed-gradient descents (restart 0 starts in the
    step box s + U(-step, step), the others anywhere in the ball); {steps done: per-state best} at each checkpoint."""
    n = len(obs)
    x0 = obs.repeat(restarts, 1)
    radius = torch.full((restarts, 1, 1), eps)
    radius[0] = min(step, eps)
    x = x0 + (radius * (2 * torch.rand(restarts, n, obs.shape[1]) - 1)).reshape(x0.shape)
    best, seen = torch.full((n,), float("inf")), {}
    for k in range(1, steps + 1):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x0, x).sum(), x)
        x = torch.max(torch.min(x.detach() - step * grad.sign(), x0 + eps), x0 - eps)
        if k in checkpoints or k == steps:
            with torch.no_grad():
                best = torch.minimum(best, objective(x0, x).reshape(restarts, n).min(0).values)
            seen[k] = best.clone()
    return seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True)
    p.add_argument("--states", type=int, default=400)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attack-args", default="", help="settings of attacks/pgd.py's PGDAttacker to measure, as JSON "
                   "(e.g. '{\"steps\": 50, \"step_size_rule\": ...}'; default: its defaults)")
    p.add_argument("--out", default=None, help="JSON of every row")
    p.add_argument("--figure", default=None, help="PNG of the curves")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from attacks.pgd import PGDAttacker

    marks = tuple(s for s in (10, 20, 30, 50, 100, 150, 200, 300, 400) if s <= a.max_steps)
    report = {}
    for path in a.ckpts:
        victim = load_victim(path)
        eps, objective = victim.eps, objective_of(victim)
        torch.manual_seed(a.seed)
        states = visited_states(victim, a.states, a.seed)
        with torch.no_grad():
            clean = objective(states, states)
        rows, curves, t0 = [], {}, time.time()
        rules = {"eps/100": lambda s: eps / 100, "eps/20": lambda s: eps / 20, "eps/10": lambda s: eps / 10,
                 "2.5 eps/steps": lambda s: 2.5 * eps / s}
        for rule, step_of in rules.items():
            for restarts in (1, 5, 20):
                if rule == "2.5 eps/steps":  # the step depends on the budget: one run per number of steps
                    seen = {s: signed_pgd(objective, states, eps, s, step_of(s), restarts)[s] for s in marks}
                else:
                    seen = signed_pgd(objective, states, eps, a.max_steps, step_of(a.max_steps), restarts, marks)
                for steps, best in seen.items():
                    rows.append({"rule": rule, "restarts": restarts, "steps": steps,
                                 "drop": float((clean - best).mean())})
                curves[f"{rule}, {restarts} restarts"] = [(s, float((clean - seen[s]).mean())) for s in sorted(seen)]
        reference = max(r["drop"] for r in rows)
        extra = json.loads(a.attack_args) if a.attack_args else {}
        attacker = PGDAttacker(victim, **extra)
        torch.manual_seed(a.seed)
        tick = time.time()
        with torch.no_grad():
            attacked = torch.stack([attacker_states(attacker, s) for s in states])
            default_drop = float((clean - objective(states, attacked)).mean())
        per_state_ms = 1000 * (time.time() - tick) / len(states)
        best_row = max(rows, key=lambda r: r["drop"])
        print(f"\n{path} ({victim.kind}, eps {eps}, {len(states)} states, {time.time() - t0:.0f}s): reference drop "
              f"{reference:.4g} ({best_row['steps']} steps, {best_row['rule']}, {best_row['restarts']} restarts)")
        print(f"  attacks/pgd.py {extra or 'defaults'}: {default_drop:.4g} = {100 * default_drop / reference:.1f} % "
              f"of the reference, {per_state_ms:.2f} ms per attacked state")
        print("  | rule | restarts | " + " | ".join(f"{s} steps" for s in marks) + " |")
        for name, curve in curves.items():
            rule, restarts = name.split(", ")
            print(f"  | {rule} | {restarts.split()[0]} | " +
                  " | ".join(f"{100 * d / reference:.1f} %" for _, d in curve) + " |")
        report[path] = {"kind": victim.kind, "eps": eps, "states": len(states), "reference_drop": reference,
                        "reference_config": best_row, "attack": {"settings": extra or "defaults", "drop": default_drop,
                                                                 "share": default_drop / reference,
                                                                 "ms_per_state": per_state_ms},
                        "rows": rows}
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    if a.figure:
        plot(report, a.figure)


def attacker_states(attacker, obs_n: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        return attacker(obs_n)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report), figsize=(5 * len(report), 4), squeeze=False)
    for ax, (ckpt, r) in zip(axes[0], report.items()):
        for rule in ("eps/100", "eps/20", "eps/10", "2.5 eps/steps"):
            for restarts, style in ((1, ":"), (5, "--"), (20, "-")):
                pts = sorted((row["steps"], row["drop"]) for row in r["rows"]
                             if row["rule"] == rule and row["restarts"] == restarts)
                ax.plot([s for s, _ in pts], [100 * d / r["reference_drop"] for _, d in pts], style,
                        label=f"{rule}, {restarts}" if restarts != 5 else None)
        ax.axhline(100 * r["attack"]["share"], color="k", lw=0.8, label="attacks/pgd.py")
        ax.axhline(95, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_title(os.path.basename(ckpt), fontsize=8)
        ax.set_xlabel("PGD steps")
        ax.set_ylabel("% of the reference drop")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
