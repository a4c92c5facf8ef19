"""Are the trained critics degenerate? Compare each SAC-kind checkpoint's Q(s, a) with the soft Monte-Carlo return
of the states and actions it is asked about.

    python benchmarks/critic_check.py --ckpts results/halfcheetah_50k/models/*.pt --out results/halfcheetah_50k/critic_check.json

For every checkpoint, episodes are rolled out with the stochastic policy (what a SAC critic evaluates), once clean and
once under the PGD (minQ) attack of attacks/pgd.py. At each step t below --horizon the soft return
G_t = r_t + gamma * (G_{t+1} - alpha * log pi(a_{t+1} | s~_{t+1})) (alpha of the checkpoint; HalfCheetah never
terminates, and at t < 500 the 1000-step truncation leaves gamma^500 < 0.7 % of the tail out) is set against
min_j Q_j(s_t, a_t). A usable critic ranks states like G (Pearson r near 1); VALT's critics are trained toward the
value under their adversary, so their bias should sit nearer the attacked G than the clean one. The last column is
the critic's own view of the attack: the mean of min_j Q_j(s, mu(s)) - min_j Q_j(s, mu(s~_PGD)) over the first clean
episode's states (PGD minimises the mean of the twins, as attacks/pgd.py does), relative to the mean |Q|: the signal
every Q-based adversary (PGD, VALT-EPS's) descends. It is small when the critic is flat in the action or when the
actor's mu barely moves inside the ball; the two are not separated here. The same drop over the first attacked
episode's states says whether the attack leads the agent where each step costs more than on its clean path; next
to it, the return lost per step (clean minus attacked, over the whole episodes). --pgd-* set the PGD used in the
attacked episodes and the drops (default: attacks/pgd.py's); VALT-EPS's own search is
--pgd-steps 2 --pgd-step-scale 1 --pgd-restarts 1 --pgd-start step.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Optional

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from attacks.common import AttackError, kept_rows, load_victim, pgd_minimize, write_rows  # noqa: E402
from attacks import pgd as pgd_defaults  # noqa: E402
from attacks.pgd import PGDAttacker  # noqa: E402


def soft_returns(rewards, log_probs, alpha: float, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * (G_{t+1} - alpha * log pi(a_{t+1} | s~_{t+1})), 0 past the last step (s~ = what the
    policy saw: s when clean): the soft Q target of SAC (and VALT's V(s, s~)) unrolled along one episode."""
    returns, tail = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):  # tail = the soft value of the next state
        returns[t] = rewards[t] + gamma * tail
        tail = returns[t] - alpha * log_probs[t]
    return returns


def episode(victim, attacker, seed: int, alpha: float, gamma: float):
    """One stochastic episode: the true states, the executed actions, the soft returns G_t, the reward per step."""
    env = victim.make_env()
    obs, _ = env.reset(seed=seed)
    states, actions, rewards, log_probs, done = [], [], [], [], False
    while not done:
        obs_n = victim.normalize(obs)
        seen = attacker(obs_n) if attacker is not None else obs_n
        with torch.no_grad():
            action, log_prob = victim.actor.sample(seen.unsqueeze(0))
        obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
        states.append(obs_n)
        actions.append(action[0])
        rewards.append(float(reward))
        log_probs.append(float(log_prob.reshape(-1)[0]))
        done = terminated or truncated
    env.close()
    return (torch.stack(states), torch.stack(actions), soft_returns(rewards, log_probs, alpha, gamma),
            sum(rewards) / len(rewards))


def check(path: str, episodes: int, horizon: int, seed: int, pgd_settings: Optional[dict] = None) -> dict:
    victim = load_victim(path)
    if victim.kind != "sac":
        raise AttackError(f"{path}: a {victim.kind} checkpoint; this check compares a SAC critic's Q(s, a)")
    alpha, gamma = float(victim.ckpt["log_alpha"].exp()), float(victim.ckpt["args"]["gamma"])
    torch.manual_seed(seed)
    row = {"ckpt": os.path.relpath(path, ROOT), "method": victim.method, "alpha": alpha}
    pgd = PGDAttacker(victim, **(pgd_settings or {}))
    first_states = {}
    for mode, attacker in (("clean", None), ("pgd", pgd)):
        q_all, g_all, per_step = [], [], []
        for i in range(episodes):
            states, actions, returns, reward_per_step = episode(victim, attacker, seed + i, alpha, gamma)
            with torch.no_grad():
                q_all.append(victim.critic(states[:horizon], actions[:horizon]).min(0).values.numpy())
            g_all.append(returns[:horizon])
            per_step.append(reward_per_step)
            first_states.setdefault(mode, states[:horizon])
        q, g = np.concatenate(q_all), np.concatenate(g_all)
        row[mode] = {"mean_G": float(g.mean()), "mean_Q": float(q.mean()), "bias": float((q - g).mean()),
                     "pearson": float(np.corrcoef(q, g)[0, 1]), "std_G": float(g.std()), "std_Q": float(q.std()),
                     "reward_per_step": float(np.mean(per_step))}

    def drop(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (Q drop, clean Q) per state
        obs_tilde = pgd_minimize(pgd.objective, states, victim.eps, pgd.steps, pgd.step_size, pgd.restarts, pgd.start)
        with torch.no_grad():
            q_clean = victim.critic(states, victim.actor.deterministic(states)).min(0).values
            q_attacked = victim.critic(states, victim.actor.deterministic(obs_tilde)).min(0).values
        return q_clean - q_attacked, q_clean

    clean_drop, q_clean = drop(first_states["clean"])
    row["critic_attack_drop"] = float(clean_drop.mean())
    row["critic_attack_drop_rel"] = float(clean_drop.mean() / q_clean.abs().mean().clamp_min(1e-6))
    row["critic_attack_drop_attacked_states"] = float(drop(first_states["pgd"])[0].mean())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True, help="SAC-kind checkpoints (slim ones are enough)")
    p.add_argument("--episodes", type=int, default=2, help="episodes per checkpoint and mode")
    p.add_argument("--horizon", type=int, default=500,
                   help="steps of each episode compared: G treats the episode's last step as terminal, so keep the "
                        "horizon well short of the time limit (at 500 of 1000 the missing tail weighs gamma^500 < 0.7%%)")
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON to write (rows of other checkpoints already there are kept)")
    p.add_argument("--pgd-steps", type=int, default=pgd_defaults.STEPS)
    p.add_argument("--pgd-step-scale", type=float, default=pgd_defaults.STEP_SCALE, help="step in units of eps/steps")
    p.add_argument("--pgd-restarts", type=int, default=pgd_defaults.RESTARTS)
    p.add_argument("--pgd-start", choices=pgd_defaults.PGD_STARTS, default=pgd_defaults.START)
    a = p.parse_args()
    if a.episodes < 1 or not 2 <= a.horizon:
        sys.exit("critic_check: --episodes must be >= 1 and --horizon >= 2")
    if not math.isfinite(a.pgd_step_scale):
        sys.exit("critic_check: --pgd-step-scale must be a finite number")
    pgd_settings = {"steps": a.pgd_steps, "step_scale": a.pgd_step_scale, "restarts": a.pgd_restarts,
                    "start": a.pgd_start}
    settings = {"episodes": a.episodes, "horizon": a.horizon, "seed": a.seed,
                "attack": {"objective": "PGD (minQ), attacks/pgd.py", **pgd_settings}}
    try:
        kept_rows(a.out, settings)  # checked before the runs, not after
    except AttackError as e:
        sys.exit(f"critic_check: {e}")
    torch.set_num_threads(a.threads)
    rows = []
    head = (f"{'checkpoint':48s} {'alpha':>6s} | {'clean G':>8s} {'Q-G':>8s} {'r':>5s} | {'PGD G':>8s} {'Q-G':>8s} "
            f"{'r':>5s} | {'Q drop (PGD), clean path':>24s} {'attacked path':>13s} | {'lost/step':>9s}")
    print(head, flush=True)
    for path in a.ckpts:
        try:
            row = check(path, a.episodes, a.horizon, a.seed, pgd_settings)
        except AttackError as e:
            sys.exit(f"critic_check: {e}")
        rows.append(row)
        c, g = row["clean"], row["pgd"]
        print(f"{os.path.basename(path)[:48]:48s} {row['alpha']:6.3f} | {c['mean_G']:8.1f} {c['bias']:8.1f} "
              f"{c['pearson']:5.2f} | {g['mean_G']:8.1f} {g['bias']:8.1f} {g['pearson']:5.2f} | "
              f"{row['critic_attack_drop']:17.2f} ({100 * row['critic_attack_drop_rel']:3.0f}%) "
              f"{row['critic_attack_drop_attacked_states']:13.2f} | "
              f"{c['reward_per_step'] - g['reward_per_step']:9.2f}", flush=True)
    if a.out:
        try:
            write_rows(a.out, settings, rows)
        except AttackError as e:  # the file changed while these ran
            sys.exit(f"critic_check: {e}")


if __name__ == "__main__":
    main()
