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
actor's mu barely moves inside the ball; the two are not separated here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from attacks.common import AttackError, load_victim, pgd_minimize  # noqa: E402
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
    """One stochastic episode: the true states, the executed actions, the soft returns G_t."""
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
    return torch.stack(states), torch.stack(actions), soft_returns(rewards, log_probs, alpha, gamma)


def check(path: str, episodes: int, horizon: int, seed: int) -> dict:
    victim = load_victim(path)
    if victim.kind != "sac":
        raise AttackError(f"{path}: a {victim.kind} checkpoint; this check compares a SAC critic's Q(s, a)")
    alpha, gamma = float(victim.ckpt["log_alpha"].exp()), float(victim.ckpt["args"]["gamma"])
    torch.manual_seed(seed)
    row = {"ckpt": os.path.relpath(path, ROOT), "method": victim.method, "alpha": alpha}
    clean_states = None
    for mode, attacker in (("clean", None), ("pgd", PGDAttacker(victim))):
        q_all, g_all = [], []
        for i in range(episodes):
            states, actions, returns = episode(victim, attacker, seed + i, alpha, gamma)
            with torch.no_grad():
                q_all.append(victim.critic(states[:horizon], actions[:horizon]).min(0).values.numpy())
            g_all.append(returns[:horizon])
            if mode == "clean" and i == 0:
                clean_states = states[:horizon]
        q, g = np.concatenate(q_all), np.concatenate(g_all)
        row[mode] = {"mean_G": float(g.mean()), "mean_Q": float(q.mean()), "bias": float((q - g).mean()),
                     "pearson": float(np.corrcoef(q, g)[0, 1]), "std_G": float(g.std()), "std_Q": float(q.std())}
    pgd = PGDAttacker(victim)
    obs_tilde = pgd_minimize(pgd.objective, clean_states, victim.eps, pgd.steps, pgd.step_size, pgd.restarts, pgd.start)
    with torch.no_grad():
        q_clean = victim.critic(clean_states, victim.actor.deterministic(clean_states)).min(0).values
        q_attacked = victim.critic(clean_states, victim.actor.deterministic(obs_tilde)).min(0).values
    row["critic_attack_drop"] = float((q_clean - q_attacked).mean())
    row["critic_attack_drop_rel"] = float((q_clean - q_attacked).mean() / q_clean.abs().mean().clamp_min(1e-6))
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
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    a = p.parse_args()
    if a.episodes < 1 or not 2 <= a.horizon:
        sys.exit("critic_check: --episodes must be >= 1 and --horizon >= 2")
    torch.set_num_threads(a.threads)
    rows = []
    head = (f"{'checkpoint':48s} {'alpha':>6s} | {'clean G':>8s} {'Q-G':>8s} {'r':>5s} | {'PGD G':>8s} {'Q-G':>8s} "
            f"{'r':>5s} | {'Q drop (PGD)':>12s}")
    print(head, flush=True)
    for path in a.ckpts:
        try:
            row = check(path, a.episodes, a.horizon, a.seed)
        except AttackError as e:
            sys.exit(f"critic_check: {e}")
        rows.append(row)
        c, g = row["clean"], row["pgd"]
        print(f"{os.path.basename(path)[:48]:48s} {row['alpha']:6.3f} | {c['mean_G']:8.1f} {c['bias']:8.1f} "
              f"{c['pearson']:5.2f} | {g['mean_G']:8.1f} {g['bias']:8.1f} {g['pearson']:5.2f} | "
              f"{row['critic_attack_drop']:7.1f} ({100 * row['critic_attack_drop_rel']:3.0f}%)", flush=True)
    if a.out:
        settings = {"episodes": a.episodes, "horizon": a.horizon, "seed": a.seed, "attack": "PGD (minQ), attacks/pgd.py defaults"}
        with open(a.out + ".tmp", "w") as f:
            json.dump({"settings": settings, "rows": rows}, f, indent=1)
        os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
