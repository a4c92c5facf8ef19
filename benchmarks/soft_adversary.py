"""How hard does VALT-SOFT's adversary push, and how hard would its own optimum push?

VALT-SOFT trains against nu_phi(s~|s), fitted to the Boltzmann optimum nu*(s~|s) ∝ p(s~|s) exp(-V(s, s~) / kappa)
(SPEC §3; p uniform on the eps-ball). Whether that trains robustness depends on how far nu_phi is from p, and nu*
itself is only as far from p as V varies over the ball relative to kappa. For a VALT-SOFT checkpoint, on the first
--states states its deterministic policy visits (seeded), this prints the critic's drop

    drop(s, s~) = mean_j Q_j(s, mu(s)) - mean_j Q_j(s, mu(s~))        (the true s; mu the deterministic action)

averaged over the states, for s~ drawn from: nu_phi (the checkpoint's adversary, --draws samples per state) and
its mean; p (uniform noise); nu* at each --kappas value (self-normalised importance sampling from --samples uniform
draws per state: weights exp(drop / kappa), with their effective sample size; where that is small the estimate
likely falls short of nu*'s drop); and the suite's PGD (attacks/pgd.py defaults) for the scale. The method's V
takes the min of the twins at a sampled action and carries -alpha log pi(a|s~); this uses the deterministic
policy and the twins' mean, the suite's PGD objective; the method's own V is split into its two pieces for
uniform noise, nu_phi's draws and its mean (its drop in Q and in the entropy bonus). It also prints the adversary's mean |tanh(mean(s))| (0:
centred) and its std (prior: 0.87), and how many updates it had had since its last reset (a checkpoint written at
a multiple of --adv-reset-every holds an adversary reset at that step and updated once; newer checkpoints also
keep the one that reset replaced, which is the one measured here, as the own-adversary attack does).

    python benchmarks/soft_adversary.py \\
        --ckpts results/halfcheetah_1m/models/checkpoints/sac_valt_soft__HalfCheetah-v4__s1_step400000.pt \\
        --out results/halfcheetah_1m/soft_adversary.json
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attacks import pgd  # noqa: E402
from attacks.common import (AttackError, kept_rows, load_victim, pgd_minimize, run_cli, visited_states,  # noqa: E402
                            write_rows)
from attacks.nets import TanhGaussianActor, adversary_state  # noqa: E402


def adversary(victim) -> TanhGaussianActor:
    """nu_phi as a tanh-Gaussian over [-1, 1]^d (s~ = s + eps * sample): the actor's shape, an observation-sized
    output (sac_valt_soft.py Adversary); the one the own-adversary attack uses (attacks/nets.py adversary_state)."""
    ckpt, arch = victim.ckpt, victim.ckpt["arch"]
    if arch.get("adversary") != "tanh_gaussian_obs" or "adversary" not in ckpt:  # VALT-SOFT's nu_phi
        raise AttackError(f"{victim.ckpt_path} is not a VALT-SOFT checkpoint with its adversary")
    d = ckpt["obs_dim"]
    net = TanhGaussianActor(d, d, list(arch["hidden_sizes"]), -torch.ones(d), torch.ones(d), arch["log_std_min"],
                            arch["log_std_max"])
    net.load_state_dict({**{k: v.float() for k, v in adversary_state(ckpt)[0].items()}, "action_scale": torch.ones(d),
                         "action_bias": torch.zeros(d)})
    return net.eval().requires_grad_(False)


def drop_fn(victim, states: torch.Tensor):
    """drop(s~) per state for perturbed copies of `states` (any number of copies, copy-major)."""
    with torch.no_grad():
        clean = victim.critic(states, victim.actor.deterministic(states)).mean(0)

    def drop(perturbed: torch.Tensor) -> torch.Tensor:
        copies = len(perturbed) // len(states)
        s = states.repeat(copies, 1)
        with torch.no_grad():
            return clean.repeat(copies) - victim.critic(s, victim.actor.deterministic(perturbed)).mean(0)

    return drop


SOFT_VALUE_ACTIONS = 20  # action draws per state for the soft value's pieces


def soft_value(victim, states: torch.Tensor, perturbed: torch.Tensor) -> dict:
    """The pieces of the method's own V(s, s~) (sac_valt_soft.py soft_value): the min of the twins at a ~ pi(.|s~)
    and -alpha log pi(a|s~), each averaged over SOFT_VALUE_ACTIONS draws and the states."""
    alpha, q, entropy = float(victim.ckpt["log_alpha"].exp()), 0.0, 0.0
    with torch.no_grad():
        for _ in range(SOFT_VALUE_ACTIONS):
            action, log_prob = victim.actor.sample(perturbed)
            q += float(victim.critic(states, action).min(0).values.mean()) / SOFT_VALUE_ACTIONS
            entropy += float((-alpha * log_prob).mean()) / SOFT_VALUE_ACTIONS
    return {"q": q, "entropy": entropy}


def boltzmann(drops: torch.Tensor, kappa: float) -> tuple[float, float]:
    """E_{nu*}[drop] and the effective sample size (share of the draws), from uniform draws `drops` [samples, n]."""
    w = torch.softmax(drops / kappa, dim=0)
    ess = 1.0 / w.pow(2).sum(0) / len(drops)
    return float((w * drops).sum(0).mean()), float(ess.mean())


def measure(path: str, n_states: int, samples: int, draws: int, kappas: list[float], seed: int) -> dict:
    victim = load_victim(path)
    net = adversary(victim)
    states = visited_states(victim, n_states, seed)
    drop, eps, n = drop_fn(victim, states), victim.eps, len(states)
    torch.manual_seed(seed)
    rows = {}
    with torch.no_grad():
        u = torch.cat([net.sample(states)[0] for _ in range(draws)])
        rows["adversary"] = float(drop(states.repeat(draws, 1) + eps * u).mean())
        rows["adversary_mean"] = float(drop(states + eps * net.deterministic(states)).mean())
        mean, log_std = net(states)
        uniform = drop(states.repeat(samples, 1) + eps * (2 * torch.rand(samples * n, states.shape[1]) - 1))
    rows["uniform"] = float(uniform.mean())
    uniform = uniform.reshape(samples, n)
    settings = victim.ckpt.get("args", {})
    boltzmann_rows = {}
    for kappa in kappas:
        value, ess = boltzmann(uniform, kappa)
        boltzmann_rows[f"{kappa:g}"] = {"drop": value, "ess_share": ess}
    worst = pgd_minimize(lambda s, x: victim.critic(s, victim.actor.deterministic(x)).mean(0), states, eps,
                         pgd.STEPS, pgd.STEP_SCALE * eps / pgd.STEPS, pgd.RESTARTS, pgd.START)
    rows["pgd"] = float(drop(worst).mean())
    with torch.no_grad():  # V's drop split: does nu_phi lower Q, or the entropy bonus?
        draws_of = {"uniform": states + eps * (2 * torch.rand_like(states) - 1),
                    "adversary": states + eps * net.sample(states)[0],
                    "adversary_mean": states + eps * net.deterministic(states)}
    clean_v = soft_value(victim, states, states)
    split = {name: {k: clean_v[k] - v for k, v in soft_value(victim, states, x).items()} for name, x in draws_of.items()}
    reset_every = settings.get("adv_reset_every") or 0
    trained = adversary_state(victim.ckpt)[1] != "as saved"
    return {"step": victim.ckpt["global_step"], "kappa_trained": settings.get("kappa"), "adversary": "trained until "
            "its last reset" if trained else "as saved", "updates_since_reset": None if trained or not reset_every
            else victim.ckpt["global_step"] % reset_every + 1,  # the update at the reset step counts
            "adversary_abs_mean": float(torch.tanh(mean).abs().mean()),
            "adversary_std": float(log_std.exp().mean()), "drop": rows, "boltzmann": boltzmann_rows,
            "soft_value_drop": split}


def settings(a) -> dict:
    return {"states": a.states, "samples": a.samples, "draws": a.draws, "kappas": a.kappas, "seed": a.seed,
            "pgd": {"steps": pgd.STEPS, "step_scale": pgd.STEP_SCALE, "restarts": pgd.RESTARTS, "start": pgd.START}}


def print_entry(path: str, e: dict) -> None:
    d = e["drop"]
    which = ("its adversary as its last reset found it" if e["updates_since_reset"] is None else
             f"{e['updates_since_reset']} adversary updates since its reset")
    print(f"{os.path.basename(path)}: step {e['step']}, {which}; adversary |tanh(mean)| {e['adversary_abs_mean']:.3f}, "
          f"std {e['adversary_std']:.3f}")
    print(f"  critic's drop: adversary {d['adversary']:.2f} (its mean {d['adversary_mean']:.2f}), uniform "
          f"{d['uniform']:.2f}, PGD {d['pgd']:.2f}; nu* " + ", ".join(
              f"kappa {k}: {b['drop']:.2f} (ESS {100 * b['ess_share']:.0f} %)" for k, b in e["boltzmann"].items()))
    print("  the method's V (min of the twins, a ~ pi, - alpha log pi), its drop: " + ", ".join(
        f"{name} {d['q'] + d['entropy']:.2f} (Q {d['q']:.2f}, entropy {d['entropy']:.2f})"
        for name, d in e["soft_value_drop"].items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True)
    p.add_argument("--states", type=int, default=400)
    p.add_argument("--samples", type=int, default=1000, help="uniform draws per state for nu*")
    p.add_argument("--draws", type=int, default=10, help="adversary samples per state")
    p.add_argument("--kappas", type=float, nargs="+", default=[8.0, 2.0, 0.5, 0.1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON rows, one per checkpoint (rows of other checkpoints kept)")
    a = p.parse_args()
    if min(a.states, a.samples, a.draws) <= 0 or min(a.kappas) <= 0:
        raise AttackError("--states, --samples, --draws and --kappas must be positive")
    for path in a.ckpts:
        if not os.path.isfile(path):
            raise AttackError(f"{path} not found")
    kept_rows(a.out, settings(a))  # checked before the runs, not after
    rows = []
    for path in a.ckpts:
        entry = measure(path, a.states, a.samples, a.draws, a.kappas, a.seed)
        print_entry(path, entry)
        rows.append({"ckpt": os.path.relpath(os.path.abspath(path), ROOT), **entry})
        if a.out:
            write_rows(a.out, settings(a), rows)


if __name__ == "__main__":
    run_cli(main)
