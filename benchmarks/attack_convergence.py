"""How close does each gradient attack of attacks/ come to the optimum of its own objective?

For each victim, on the first --states states its deterministic policy visits (seeded), every gradient attack's
objective is optimised by projected signed-gradient descent over the eps-ball, swept over the step size, the number of
steps and the restarts, and the best mean gain of any configuration is the reference ("converged": doubling the
steps or the restarts of the best configurations changes it by < 1 %, printed per objective). The attacks and their
objectives (gain = how much the attack moves it, >= 0, mean over the states):

    pgd     PGD (minQ), SAC kinds: mean_j Q_j(s, mu(s)) - mean_j Q_j(s, mu(s~));  PGD (minV), PPO kinds: V(s) - V(s~)
    rs      Robust Sarsa's PGD on a Sarsa critic of the victim fitted here: Q_RS(s, mu(s)) - Q_RS(s, mu(s~))
            (PPO kinds: mu the unclipped mean, the reference's input)
    rs_mad  RS+MAD's objective on that critic, (1 - r) Q_RS - r * normalized action change, r = 0.5
    mad     MAD's action change sum(((m(s~) - m(s)) / sigma(s))^2) (the attack: SGLD; the reference: noiseless ascent)
    pa_ad   PA-AD's realisation, cos(mu(s~) - mu(s), d) + |mu(s~) - mu(s)| for a random unit direction d per state
            (a trained director's directions are not needed: the realisation is the same optimiser for any d)

Grid: step c * eps/steps for c in {1, 2.5, 4} at 10, 30 and 100 steps, and the fixed steps eps/10 and eps/100 run to
--max-steps; restarts 1, 5, 10 and 20, alternating between the step box s + U(-step, step) (the references' start)
and the whole ball (the subsets of one 20-restart batch). Then the grid's best 10-step rule with its restarts doubled
(40, 80, ... at most 320) until doubling adds < 1 %, and, where the best fixed step still gained > 1 % over the second
half of its run, that run 2x and 4x as long until doubling adds < 1 %. Then each attack's own routine, with today's
defaults and with the references' settings (OLD below), one state at a time as in an episode: its share of the
reference and its milliseconds per attacked step, the two timed alternately in the same run.

    python benchmarks/attack_convergence.py --ckpts tests/data/sac_halfcheetah_30k.pt \\
        results/halfcheetah_50k/models/sac_valt_eps__HalfCheetah-v4__s1.pt tests/data/ppo_hopper_160k.pt \\
        --out results/attack_strength/attack_convergence.json --figure results/attack_strength/attack_convergence.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from attacks import mad, pa_ad, pgd, robust_sarsa  # noqa: E402
from attacks.common import load_victim, visited_states  # noqa: E402

ATTACKS = ("pgd", "rs", "rs_mad", "mad", "pa_ad")
# the settings every gradient attack of the suite had before (the references': 10 steps of eps/10; PGD and PA-AD
# with 5 batched mixed restarts, MAD one start), measured next to today's defaults
OLD = {"pgd": dict(steps=10, step_scale=1.0, restarts=5), "rs": dict(steps=10, step_scale=1.0, restarts=5),
       "rs_mad": dict(steps=10, step_scale=1.0, restarts=5), "mad": dict(steps=10, step_scale=1.0, restarts=1),
       "pa_ad": dict(steps=10, step_scale=1.0, final_step_scale=1.0, restarts=5)}
NEW = {"pgd": dict(steps=pgd.STEPS, step_scale=pgd.STEP_SCALE, restarts=pgd.RESTARTS),
       "rs": dict(steps=pgd.STEPS, step_scale=pgd.STEP_SCALE, restarts=pgd.RESTARTS),
       "rs_mad": dict(steps=pgd.STEPS, step_scale=pgd.STEP_SCALE, restarts=pgd.RESTARTS),
       "mad": dict(steps=mad.STEPS, step_scale=mad.STEP_SCALE, restarts=mad.RESTARTS),
       "pa_ad": dict(steps=pa_ad.STEPS, step_scale=pa_ad.STEP_SCALE, final_step_scale=pa_ad.FINAL_STEP_SCALE,
                     restarts=pa_ad.RESTARTS)}
SCALES, SHORT = (1.0, 2.5, 4.0), (10, 30, 100)  # step c * eps/steps, one run per number of steps
FIXED = {"eps/10": 0.1, "eps/100": 0.01}  # fixed steps (fractions of eps), one long run with checkpoints
RESTARTS, BATCH, MAX_RESTARTS = (1, 5, 10, 20), 20, 320
SARSA = dict(steps=5000, updates=1000, sarsa_eps=0.05, sarsa_reg=1.0)  # the critic RS and RS+MAD attack here



def sarsa_critic(victim, seed: int):
    data = robust_sarsa.collect_transitions(victim, SARSA["steps"], seed)
    return robust_sarsa.fit_sarsa(data, victim.obs_dim, victim.act_dim, SARSA["updates"], SARSA["sarsa_eps"],
                                  SARSA["sarsa_reg"], seed, raw_actions=victim.kind == "ppo")


def problems(victim, states: torch.Tensor, seed: int) -> dict:
    """name -> (loss(s, s~) per sample, lower = stronger; attack(settings) -> (index, s) -> s~, the attack's own
    routine on one state). A loss's batch may hold several restarts of the states, restart-major."""
    n, ppo = len(states), victim.kind == "ppo"
    q = sarsa_critic(victim, seed + 7)
    directions = F.normalize(torch.randn(n, victim.act_dim, generator=torch.Generator().manual_seed(seed)), dim=-1)
    rs = pgd.PGDAttacker(victim, critic=q, through_mean=ppo)
    rs_mad = robust_sarsa.SarsaMADAttacker(victim, q, 0.5, through_mean=ppo)
    tile = lambda o: directions.repeat(len(o) // n, 1)  # noqa: E731
    return {
        "pgd": (pgd.PGDAttacker(victim).objective,
                lambda st: (lambda i, s, a=pgd.PGDAttacker(victim, **st): a(s))),
        "rs": (rs.objective,
               lambda st: (lambda i, s, a=pgd.PGDAttacker(victim, critic=q, through_mean=ppo, **st): a(s))),
        "rs_mad": (rs_mad.objective,
                   lambda st: (lambda i, s, a=robust_sarsa.SarsaMADAttacker(victim, q, 0.5, through_mean=ppo, **st):
                               a(s))),
        "mad": (lambda o, x: -mad.action_change(victim, o, x),
                lambda st: (lambda i, s, a=mad.MADAttacker(victim, **st): a(s))),
        "pa_ad": (lambda o, x: -pa_ad.pa_objective(victim, o, x, tile(o)),
                  lambda st: (lambda i, s: pa_ad.pa_perturb(victim, s, directions[i], st["steps"], st["restarts"],
                                                             step_scale=st["step_scale"],
                                                             final_step_scale=st["final_step_scale"]))),
    }


def descend(loss, states: torch.Tensor, eps: float, steps: int, step: float, marks) -> dict:
    """BATCH projected signed-gradient descents of loss per state (even restarts from the step box, odd ones from the
    whole ball); {k: loss after k steps [BATCH, n]} for k in marks."""
    n = len(states)
    x0 = states.repeat(BATCH, 1)
    radius = torch.full((BATCH, 1, 1), eps)
    radius[0::2] = min(step, eps)
    x = x0 + (radius * (2 * torch.rand(BATCH, n, states.shape[1]) - 1)).reshape(x0.shape)
    seen = {}
    for k in range(1, steps + 1):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(x0, x).sum(), x)
        x = torch.max(torch.min(x.detach() - step * grad.sign(), x0 + eps), x0 - eps)
        if k in marks:
            with torch.no_grad():
                seen[k] = loss(x0, x).reshape(BATCH, n)
    return seen


def sweep(loss, states: torch.Tensor, eps: float, max_steps: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    with torch.no_grad():
        clean = loss(states, states)
    runs = []  # (rule, {steps: [BATCH, n]})
    for c in SCALES:
        for steps in SHORT:
            runs.append((f"{c:g} eps/steps", descend(loss, states, eps, steps, c * eps / steps, (steps,))))
    marks = tuple(s for s in SHORT + (200, 300, 400) if s <= max_steps) + (max_steps,)
    for rule, fraction in FIXED.items():
        runs.append((rule, descend(loss, states, eps, max_steps, fraction * eps, marks)))
    rows = []
    for rule, seen in runs:
        for steps, values in seen.items():
            for r in RESTARTS:
                rows.append({"rule": rule, "steps": steps, "restarts": r,
                             "gain": float((clean - values[:r].min(0).values).mean())})
    return rows


def more_restarts(loss, states: torch.Tensor, eps: float, rows: list[dict], seed: int) -> dict:
    """The grid's best 10-step configuration with its restarts doubled (batches of BATCH) until doubling adds < 1 %
    (at most MAX_RESTARTS): {"rule", "steps", "gains": {restarts: gain}}."""
    best = max((r for r in rows if r["steps"] == SHORT[0] and r["restarts"] == BATCH), key=lambda r: r["gain"])
    steps = best["steps"]
    step = FIXED[best["rule"]] * eps if best["rule"] in FIXED else float(best["rule"].split()[0]) * eps / steps
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        clean = loss(states, states)
    lowest, gains, done = torch.full((len(states),), float("inf")), {}, 0
    while done < MAX_RESTARTS:
        lowest = torch.minimum(lowest, descend(loss, states, eps, steps, step, (steps,))[steps].min(0).values)
        done += BATCH
        batches = done // BATCH
        if batches & (batches - 1) == 0:  # 20, 40, 80, ... restarts
            gains[done] = float((clean - lowest).mean())
            if batches > 1 and gains[done] < 1.01 * gains[done // 2]:
                break
    return {"rule": best["rule"], "steps": steps, "gains": gains}


def more_steps(loss, states: torch.Tensor, eps: float, rows: list[dict], seed: int) -> dict:
    """Where the grid's best fixed-step rule still gains > 1 % from its longest run's half to its end: that rule with
    BATCH restarts run 2x and 4x as long, until doubling adds < 1 %: {"rule", "gains": {steps: gain}}."""
    fixed = [r for r in rows if r["rule"] in FIXED and r["restarts"] == BATCH]
    best = max(fixed, key=lambda r: r["gain"])
    longest = max(r["steps"] for r in fixed)
    gains = {r["steps"]: r["gain"] for r in fixed if r["rule"] == best["rule"]}
    if gains[longest] < 1.01 * gains[longest // 2]:
        return {"rule": best["rule"], "gains": gains}
    with torch.no_grad():
        clean = loss(states, states)
    for total in (2 * longest, 4 * longest):
        torch.manual_seed(seed + 2)
        seen = descend(loss, states, eps, total, FIXED[best["rule"]] * eps, (total // 2, total))
        gains.update({k: float((clean - v.min(0).values).mean()) for k, v in seen.items()})
        if gains[total] < 1.01 * gains[total // 2]:
            break
    return {"rule": best["rule"], "gains": gains}


def convergence(rows: list[dict], extension: dict, longer: dict) -> dict:
    """The reference (the best gain of the grid, the step doubling and the restart doubling) and what doubling the
    budget adds at the end: the restarts (the restart doubling's last two points) and the steps (the best of the grid
    and the step doubling against their best with at most half the steps)."""
    steps = sorted(int(k) for k in longer["gains"])
    rows = rows + [{"rule": longer["rule"], "steps": k, "restarts": BATCH, "gain": longer["gains"][k]}
                   for k in steps[-2:]]
    best = max(rows, key=lambda r: r["gain"])
    half_steps = max(r["gain"] for r in rows if r["steps"] <= steps[-1] // 2)
    counts = sorted(int(k) for k in extension["gains"])
    last, half = extension["gains"][counts[-1]], extension["gains"][counts[-1] // 2]
    config = dict(best)
    if last > best["gain"]:
        config = {"rule": extension["rule"], "steps": extension["steps"], "restarts": counts[-1], "gain": last}
    return {"reference": max(best["gain"], last), "config": config,
            "restarts_doubling": last / half - 1, "steps_doubling": best["gain"] / half_steps - 1}


def measure_defaults(attack, loss, states: torch.Tensor, seed: int) -> dict:
    """Today's defaults and OLD, each state attacked on its own; the gains and the ms per call, alternating."""
    with torch.no_grad():
        clean = loss(states, states)
    out = {}
    for label, settings in (("old", OLD), ("new", NEW)):
        out[label] = {"settings": settings[attack.name], "tilde": [], "seconds": 0.0}
    runners = {label: attack(out[label]["settings"]) for label in out}
    gen_state = {label: None for label in out}
    for label in out:  # each its own random stream, so the order of the alternation does not matter
        torch.manual_seed(seed)
        gen_state[label] = torch.get_rng_state()
    for i, s in enumerate(states):
        for label in out:
            torch.set_rng_state(gen_state[label])
            tick = time.perf_counter()
            out[label]["tilde"].append(runners[label](i, s))
            out[label]["seconds"] += time.perf_counter() - tick
            gen_state[label] = torch.get_rng_state()
    for label, r in out.items():
        with torch.no_grad():
            r["gain"] = float((clean - loss(states, torch.stack(r.pop("tilde")))).mean())
        r["ms_per_step"] = 1000 * r.pop("seconds") / len(states)
    return out


class Named:
    def __init__(self, name, make):
        self.name, self.make = name, make

    def __call__(self, settings):
        return self.make(settings)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True)
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--states", type=int, default=400)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="take the sweeps already in --out (same states, seed and "
                   "grid) and measure only the attacks' own routines")
    p.add_argument("--out", default=None, help="JSON of every row (written after each sweep)")
    p.add_argument("--figure", default=None, help="PNG of the curves")
    a = p.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine; the ms per step are single-thread numbers
    names = [n for n in a.attacks.split(",") if n]
    grid = {"scales": SCALES, "short": SHORT, "fixed": FIXED, "restarts": RESTARTS, "max_steps": a.max_steps,
            "states": a.states, "seed": a.seed, "sarsa": SARSA}
    report = {}
    if a.reuse and a.out and os.path.isfile(a.out):
        with open(a.out) as f:
            report = json.load(f)
    for path in a.ckpts:
        victim = load_victim(path)
        states = visited_states(victim, a.states, a.seed)
        probs = problems(victim, states, a.seed)
        entry = report.get(path, {})
        if entry.get("grid") != json.loads(json.dumps(grid)):
            entry = {"kind": victim.kind, "eps": victim.eps, "grid": grid, "attacks": {}}
        report[path] = entry
        print(f"\n{path} ({victim.kind}, eps {victim.eps}, {len(states)} states)", flush=True)
        for name in names:
            loss, attack = probs[name]
            t0 = time.time()
            done = entry["attacks"].get(name)
            if done is None:
                done = entry["attacks"][name] = {"rows": sweep(loss, states, victim.eps, a.max_steps, a.seed)}
                done["sweep_seconds"] = round(time.time() - t0, 1)
            if "more_restarts" not in done:
                t0 = time.time()
                done["more_restarts"] = more_restarts(loss, states, victim.eps, done["rows"], a.seed)
                done["more_restarts_seconds"] = round(time.time() - t0, 1)
            done["more_restarts"]["gains"] = {int(k): v for k, v in done["more_restarts"]["gains"].items()}
            if "more_steps" not in done:
                t0 = time.time()
                done["more_steps"] = more_steps(loss, states, victim.eps, done["rows"], a.seed)
                done["more_steps_seconds"] = round(time.time() - t0, 1)
            done["more_steps"]["gains"] = {int(k): v for k, v in done["more_steps"]["gains"].items()}
            done["convergence"] = convergence(done["rows"], done["more_restarts"], done["more_steps"])
            done["defaults"] = measure_defaults(Named(name, attack), loss, states, a.seed)
            print_attack(name, done)
            if a.out:
                write(a.out, report)
    if a.figure:
        plot(report, names, a.figure)


def print_attack(name: str, r: dict) -> None:
    c, ref = r["convergence"], r["convergence"]["reference"]
    cfg = c["config"]
    print(f"  {name}: reference gain {ref:.4g} ({cfg['rule']}, {cfg['steps']} steps, {cfg['restarts']} restarts; "
          f"doubling restarts +{100 * c['restarts_doubling']:.2f} %, doubling steps +{100 * c['steps_doubling']:.2f} %"
          f"; sweep {r.get('sweep_seconds', 0):.0f}s)")
    ext = r["more_restarts"]
    print(f"    {ext['rule']}, {ext['steps']} steps, restarts doubled: " + ", ".join(
        f"{k}: {100 * v / ref:.1f} %" for k, v in sorted(ext["gains"].items())) +
        f" ({r.get('more_restarts_seconds', 0):.0f}s)")
    longer = r["more_steps"]
    print(f"    {longer['rule']}, {BATCH} restarts, steps: " + ", ".join(
        f"{k}: {100 * v / ref:.1f} %" for k, v in sorted(longer["gains"].items())) +
        f" ({r.get('more_steps_seconds', 0):.0f}s)")
    for label, d in r["defaults"].items():
        st = d["settings"]
        final = st.get("final_step_scale", st["step_scale"])
        decay = f" -> {final:g}" if final != st["step_scale"] else ""
        print(f"    {label} ({st['steps']} steps of {st['step_scale']:g}{decay} eps/steps, {st['restarts']} restarts): "
              f"{100 * d['gain'] / ref:.1f} %, {d['ms_per_step']:.2f} ms per attacked step")
    print(f"    cost new/old: {r['defaults']['new']['ms_per_step'] / r['defaults']['old']['ms_per_step']:.2f}x")
    steps = sorted({row["steps"] for row in r["rows"]})
    print("    | rule | restarts | " + " | ".join(f"{s}" for s in steps) + " |")
    for rule in sorted({row["rule"] for row in r["rows"]}, key=lambda x: (x[0].isalpha(), x)):
        for restarts in (1, 5, 20):
            cells = {row["steps"]: row["gain"] for row in r["rows"]
                     if row["rule"] == rule and row["restarts"] == restarts}
            print(f"    | {rule} | {restarts} | " +
                  " | ".join(f"{100 * cells[s] / ref:.1f} %" if s in cells else "" for s in steps) + " |")


def write(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)


def plot(report: dict, names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), len(report), figsize=(4.2 * len(report), 2.8 * len(names)), squeeze=False)
    for col, (ckpt, entry) in enumerate(report.items()):
        for row, name in enumerate(names):
            ax, r = axes[row][col], entry["attacks"].get(name)
            if r is None:
                continue
            ref = r["convergence"]["reference"]
            rules = sorted({x["rule"] for x in r["rows"]}, key=lambda x: (x[0].isalpha(), x))
            for i, rule in enumerate(rules):
                for restarts, style in ((1, ":"), (20, "-")):
                    pts = sorted((x["steps"], x["gain"]) for x in r["rows"]
                                 if x["rule"] == rule and x["restarts"] == restarts)
                    ax.plot([s for s, _ in pts], [100 * g / ref for _, g in pts], style, color=f"C{i}", marker=".",
                            label=f"{rule}" if restarts == 20 else None)
            ext = r["more_restarts"]
            ax.plot([ext["steps"]] * len(ext["gains"]), [100 * g / ref for g in ext["gains"].values()], "kx", ms=3,
                    label="best 10-step rule, restarts doubled" if row == 0 and col == 0 else None)
            for label, color in (("old", "r"), ("new", "k")):
                ax.axhline(100 * r["defaults"][label]["gain"] / ref, color=color, lw=1,
                           label=f"{label} default" if row == 0 and col == 0 else None)
            ax.axhline(95, color="grey", lw=0.5, ls="--")
            ax.set_xscale("log")
            ax.set_ylim(0, 105)
            ax.set_title(f"{name}: {os.path.basename(ckpt)}", fontsize=7)
            ax.set_xlabel("steps", fontsize=7)
            ax.set_ylabel("% of the reference gain", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=5, title="solid: 20 restarts, dotted: 1", title_fontsize=5)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
