"""How much of the worst case do VALT-EPS's searches inside training find?

VALT-EPS trains against two inner searches, both 2 signed-gradient steps by default (paper: 2): the PE adversary's
PGD, which picks the observation its targets value (sac_valt_eps.py pgd_worst_obs), and the SA regulariser's SGLD,
which picks the observation the policy is pulled back at (sa_regularizer). A search weaker than the evaluation's
converged PGD trains the agent against a milder adversary than the one it is scored against. For a VALT-EPS
checkpoint, on the first --states states its deterministic policy visits (seeded), each search is set against the
optimum of its own objective, found as benchmarks/attack_convergence.py finds it (a grid of step sizes, steps and
20 batched restarts, then restarts and steps doubled until doubling adds < 1 %):

    pe    minimise mean_j Q_j(s, mu(s~)) over the eps-ball (the critic keeps the true s);
          gain = mean_j Q_j(s, mu(s)) - mean_j Q_j(s, mu(s~))
    reg   maximise the regulariser's distance D(pi(.|s), pi(.|s~)) (--reg-distance of the run: mse of the executed
          actions, or kl of the pre-tanh Gaussians) over the ball of the regulariser's radius at the checkpoint's step
          (its ramp: 0 -> eps between --reg-eps-start-step and --reg-eps-end-step), and over the full eps-ball, the
          radius from the end of the ramp on; gain = D

Each search runs --draws times (a training update draws one random start per state); printed: its mean gain as a
share of the optimum (mean and range over the draws), and next to it the evaluation's PGD (attacks/pgd.py defaults)
on the pe objective. The search settings are read from the checkpoint's training arguments.

    python benchmarks/search_strength.py \\
        --ckpts results/halfcheetah_1m/models/checkpoints/sac_valt_eps__HalfCheetah-v4__s1_step200000.pt \\
        --out results/halfcheetah_1m/search_strength.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attack_convergence import convergence, more_restarts, more_steps, sweep, write  # noqa: E402

from attacks import pgd  # noqa: E402
from attacks.common import AttackError, load_victim, project, visited_states  # noqa: E402

MAX_STEPS = (20, 60, 200, 400, 600, 800)  # those whose half attack_convergence's grid reads (10, 30, 100-400)
SEARCH_FLAGS = ("pgd_steps", "pgd_step_scale", "pgd_start", "reg_sgld_steps", "reg_sgld_beta", "reg_distance",
                "reg_eps_start_step", "reg_eps_end_step")


def training_settings(victim) -> dict:
    args = victim.ckpt.get("args") or {}
    if victim.method != "valt_eps" or any(args.get(flag) is None for flag in SEARCH_FLAGS):
        raise AttackError(f"{victim.ckpt_path} is not a VALT-EPS checkpoint with its training arguments "
                          f"(method {victim.method!r})")
    return {flag: args[flag] for flag in SEARCH_FLAGS}


def reg_radius(settings: dict, eps: float, step: int) -> float:
    """The regulariser's radius at `step`: eps times a linear ramp 0 -> 1 between the two steps."""
    start, end = settings["reg_eps_start_step"], settings["reg_eps_end_step"]
    return eps * min(max((step - start) / max(end - start, 1), 0.0), 1.0)


def policy_distance(victim, distance: str):
    """D(pi(.|s), pi(.|s~)) per sample, as the training's regulariser measures it; pi(.|s) held constant."""
    actor = victim.actor

    def mse(obs, obs_tilde):
        with torch.no_grad():
            clean = actor.deterministic(obs)
        return (actor.deterministic(obs_tilde) - clean).pow(2).sum(-1)  # tanh(mean) * scale + bias: bias cancels

    def kl(obs, obs_tilde):
        with torch.no_grad():
            ref_mean, ref_log_std = actor(obs)
        mean, log_std = actor(obs_tilde)
        return (log_std - ref_log_std + ((2 * ref_log_std).exp() + (ref_mean - mean).pow(2)) /
                (2 * (2 * log_std).exp()) - 0.5).sum(-1)

    return {"mse": mse, "kl": kl}[distance]


def training_pgd(victim, settings: dict, states: torch.Tensor) -> torch.Tensor:
    """pgd_worst_obs: --pgd-steps signed steps of pgd_step_scale * eps / pgd_steps from one random start."""
    attacker = pgd.PGDAttacker(victim, steps=settings["pgd_steps"], step_scale=settings["pgd_step_scale"],
                               restarts=1, start=settings["pgd_start"])
    return attacker(states)


def training_sgld(distance, settings: dict, states: torch.Tensor, radius: float) -> torch.Tensor:
    """sa_regularizer: a random corner of the step box, then --reg-sgld-steps signed ascent steps of radius/steps on
    each state's gradient plus sqrt(2 * step * beta) / (i + 2) * N(0, 1), projected each step."""
    steps = settings["reg_sgld_steps"]
    step = radius / steps
    noise_scale = math.sqrt(2 * step * settings["reg_sgld_beta"])
    x = states + step * torch.randn_like(states).sign()
    for i in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(distance(states, x).sum(), x)
        x = project(x.detach() + step * (grad + noise_scale / (i + 2) * torch.randn_like(states)).sign(), states,
                    radius)
    return x.detach()


def optimum(loss, states: torch.Tensor, radius: float, max_steps: int, seed: int) -> dict:
    rows = sweep(loss, states, radius, max_steps, seed)
    c = convergence(rows, more_restarts(loss, states, radius, rows, seed), more_steps(loss, states, radius, rows, seed))
    return {"gain": c["reference"], "config": c["config"], "restarts_doubling": c["restarts_doubling"],
            "steps_doubling": c["steps_doubling"]}


def shares(loss, states: torch.Tensor, search, reference: float, draws: int, seed: int) -> dict:
    """The search's mean gain over the states, as a share of the optimum, for each of `draws` random starts."""
    with torch.no_grad():
        clean = loss(states, states)
    out = []
    for d in range(draws):
        torch.manual_seed(seed + 1000 + d)
        tilde = search(states)
        with torch.no_grad():
            out.append(float((clean - loss(states, tilde)).mean()) / reference)
    return {"mean": sum(out) / len(out), "min": min(out), "max": max(out), "draws": out}


def measure(path: str, n_states: int, draws: int, max_steps: int, seed: int) -> dict:
    victim = load_victim(path)
    settings = training_settings(victim)
    step, eps = victim.ckpt["global_step"], victim.eps
    states = visited_states(victim, n_states, seed)
    entry = {"global_step": step, "eps": eps, "states": len(states), "training": settings, "searches": {}}
    t0 = time.time()
    pe_loss = pgd.PGDAttacker(victim).objective
    best = optimum(pe_loss, states, eps, max_steps, seed)
    entry["searches"]["pe"] = {
        "radius": eps, "optimum": best,
        "training": shares(pe_loss, states, lambda s: training_pgd(victim, settings, s), best["gain"], draws, seed),
        "evaluation_pgd": shares(pe_loss, states, pgd.PGDAttacker(victim), best["gain"], draws, seed),
        "seconds": round(time.time() - t0, 1)}
    distance = policy_distance(victim, settings["reg_distance"])
    reg_loss = lambda s, x: -distance(s, x)  # noqa: E731  (lower = stronger, as the optimiser expects)
    for label, radius in (("reg_at_step", reg_radius(settings, eps, step)), ("reg_at_eps", eps)):
        if radius <= 0 or (label == "reg_at_eps" and radius == entry["searches"].get("reg_at_step", {}).get("radius")):
            continue
        t0 = time.time()
        best = optimum(reg_loss, states, radius, max_steps, seed)
        entry["searches"][label] = {
            "radius": radius, "optimum": best,
            "training": shares(reg_loss, states, lambda s, r=radius: training_sgld(distance, settings, s, r),
                               best["gain"], draws, seed),
            "seconds": round(time.time() - t0, 1)}
    return entry


def print_entry(path: str, e: dict) -> None:
    print(f"\n{path} (step {e['global_step']}, eps {e['eps']}, {e['states']} states)")
    t = e["training"]
    for label, r in e["searches"].items():
        o, s = r["optimum"], r["training"]
        search = (f"{t['pgd_steps']} steps of {t['pgd_step_scale']:g} r/steps, start {t['pgd_start']}" if label == "pe"
                  else f"SGLD {t['reg_sgld_steps']} steps of r/steps, beta {t['reg_sgld_beta']:g}, "
                       f"{t['reg_distance']}")
        print(f"  {label:12s} radius {r['radius']:.4g}: optimum gain {o['gain']:.4g} ({o['config']['rule']}, "
              f"{o['config']['steps']} steps, {o['config']['restarts']} restarts; doubling restarts "
              f"+{100 * o['restarts_doubling']:.2f} %, steps +{100 * o['steps_doubling']:.2f} %)")
        print(f"    training search ({search}): {100 * s['mean']:.1f} % of it "
              f"({100 * s['min']:.1f}-{100 * s['max']:.1f} % over {len(s['draws'])} draws)")
        if "evaluation_pgd" in r:
            ev = r["evaluation_pgd"]
            print(f"    evaluation PGD ({pgd.STEPS} steps of {pgd.STEP_SCALE:g} eps/steps, {pgd.RESTARTS} restarts): "
                  f"{100 * ev['mean']:.1f} %")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True, help="VALT-EPS checkpoints (full or slim)")
    p.add_argument("--states", type=int, default=400)
    p.add_argument("--draws", type=int, default=10, help="independent runs of each training search")
    p.add_argument("--max-steps", type=int, default=200, help="the longest fixed-step run of the optimum's grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON, one entry per checkpoint (kept across runs, updated per entry)")
    a = p.parse_args()
    if min(a.states, a.draws) < 1:
        p.error("--states and --draws must be >= 1")
    if a.max_steps not in MAX_STEPS:  # the step doubling compares a run's end with its half, a point the grid reads
        p.error(f"--max-steps must be one of {', '.join(map(str, MAX_STEPS))}")
    torch.set_num_threads(1)
    report = {}
    if a.out and os.path.isfile(a.out):
        with open(a.out) as f:
            report = json.load(f)
    for path in a.ckpts:
        try:
            report[path] = measure(path, a.states, a.draws, a.max_steps, a.seed)
        except AttackError as e:
            sys.exit(f"error: {e}")
        print_entry(path, report[path])
        if a.out:
            write(a.out, report)


if __name__ == "__main__":
    main()
