"""Robust Sarsa (RS) attack (Zhang et al. 2020): learn Q^pi of the FROZEN victim by Sarsa on its own clean
rollouts, with a robustness regulariser that keeps Q smooth over an action ball, then PGD-minimise
that critic, mean_j Q_RS(s, mu(s~)), exactly as the PGD (minQ) attack does with the victim's critic.

- Real (s, a, r, s', a') tuples from consecutive steps of the victim's own episodes (the old reference code
  paired each sample with the next one of a shuffled minibatch; SPEC §7). a' = mu(s') is the victim's
  deterministic action at s'; a time-limit truncation keeps bootstrapping, a termination does not.
- Regulariser (our choice, an adversarial penalty): reg_coef * E[max_{|a^ - a|_inf <= reg_eps} (Q(s,a^) - Q(s,a))^2]
  with the max by 3 signed-gradient steps on the action. A sweep over (reg_coef, reg_eps) settings; each
  learned critic attacks the victim, the worst result is reported.

    python attacks/robust_sarsa.py --ckpt runs/<run>/model.pt --rs-steps 50000 --rs-updates 20000
"""
from __future__ import annotations

import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac  # noqa: E402
from attacks.common import AttackError, Victim, rollout, standalone  # noqa: E402
from attacks.pgd import PGDAttacker  # noqa: E402

NAME, COLUMN = "rs", "RS"


def collect_transitions(victim: Victim, steps: int, seed: int) -> dict:
    """Clean deterministic rollouts of the victim, as consecutive (s, a, r, s', a', terminated) tuples."""
    env = victim.make_env()
    obs_l, act_l, rew_l, next_l, next_act_l, term_l = [], [], [], [], [], []
    obs, _ = env.reset(seed=seed)
    obs_n = victim.normalize(obs)
    action = victim.act(obs_n.unsqueeze(0))[0]
    for _ in range(steps):
        raw_next, reward, terminated, truncated, _ = env.step(action.cpu().numpy())
        next_n = victim.normalize(raw_next)
        next_action = victim.act(next_n.unsqueeze(0))[0]  # the action the victim takes (or would take) at s'
        obs_l.append(obs_n), act_l.append(action), rew_l.append(float(reward))
        next_l.append(next_n), next_act_l.append(next_action), term_l.append(float(terminated))
        if terminated or truncated:
            obs, _ = env.reset()
            obs_n = victim.normalize(obs)
            action = victim.act(obs_n.unsqueeze(0))[0]
        else:
            obs_n, action = next_n, next_action
    env.close()
    dev = victim.device
    return {"obs": torch.stack(obs_l), "actions": torch.stack(act_l), "rewards": torch.tensor(rew_l, device=dev),
            "next_obs": torch.stack(next_l), "next_actions": torch.stack(next_act_l),
            "terminated": torch.tensor(term_l, device=dev)}


def worst_action_gap(q: sac.TwinCritic, obs, actions, reg_eps: float, steps: int = 3) -> torch.Tensor:
    """max over the action ball of (Q(s, a^) - Q(s, a))^2, per critic and sample."""
    with torch.no_grad():
        reference = q(obs, actions)
    a_hat = actions + reg_eps * (2 * torch.rand_like(actions) - 1)
    for _ in range(steps):
        a_hat = a_hat.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad((q(obs, a_hat) - reference).pow(2).sum(), a_hat)
        a_hat = torch.max(torch.min(a_hat.detach() + reg_eps / steps * grad.sign(), actions + reg_eps), actions - reg_eps)
    return (q(obs, a_hat.detach()) - q(obs, actions)).pow(2)


def fit_sarsa(data: dict, obs_dim: int, act_dim: int, updates: int, reg_coef: float, reg_eps: float, seed: int,
              hidden=(256, 256), gamma: float = 0.99, lr: float = 3e-4, batch_size: int = 256, tau: float = 0.005,
              device=torch.device("cpu"), log: str | None = None) -> sac.TwinCritic:
    """Sarsa policy evaluation of the fixed victim: Q(s,a) <- r + gamma (1 - term) Q'(s', a')."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    q = sac.TwinCritic(obs_dim, act_dim, list(hidden)).to(device)
    q_target = sac.TwinCritic(obs_dim, act_dim, list(hidden)).to(device)
    q_target.load_state_dict(q.state_dict())
    q_target.requires_grad_(False)
    optimizer = torch.optim.Adam(q.parameters(), lr=lr)
    n, start = len(data["rewards"]), time.time()
    for update in range(1, updates + 1):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen).to(device)
        obs, act = data["obs"][idx], data["actions"][idx]
        with torch.no_grad():
            target = data["rewards"][idx] + gamma * (1 - data["terminated"][idx]) * \
                q_target(data["next_obs"][idx], data["next_actions"][idx])
        loss = F.mse_loss(q(obs, act), target)
        if reg_coef > 0:
            loss = loss + reg_coef * worst_action_gap(q, obs, act, reg_eps).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(q_target.parameters()), list(q.parameters()), tau)
        if log and update % max(updates // 5, 1) == 0:
            print(f"  [{log}] update {update}/{updates} | loss {loss.item():.3f} | {time.time() - start:.0f}s", flush=True)
    q.requires_grad_(False)
    return q.eval()


def parse_settings(settings: list[str]) -> list[tuple[float, float]]:
    out = []
    for s in settings:
        try:
            coef, eps = (float(v) for v in s.split(":"))
        except ValueError:
            raise AttackError(f"--rs-settings expects COEF:EPS pairs, got {s!r}")
        out.append((coef, eps))
    return out


def add_args(parser, with_pgd: bool = True) -> None:
    parser.add_argument("--rs-steps", type=int, default=100_000, help="victim environment steps for Sarsa data")
    parser.add_argument("--rs-updates", type=int, default=100_000, help="Sarsa gradient steps per setting")
    parser.add_argument("--rs-settings", nargs="+", default=["0.1:0.05", "1.0:0.05", "1.0:0.2"],
                        help="regulariser sweep, COEF:ACTION_EPS pairs; the worst result is reported")
    parser.add_argument("--rs-hidden", type=int, nargs="+", default=[256, 256])
    if with_pgd:
        parser.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations on the Sarsa critic")


def evaluate(victim: Victim, args) -> dict:
    settings = parse_settings(args.rs_settings)
    if args.rs_steps <= 0 or args.rs_updates <= 0:
        raise AttackError("--rs-steps and --rs-updates must be positive")
    data = collect_transitions(victim, args.rs_steps, args.seed + 7)
    best, per_setting = None, []
    for coef, reg_eps in settings:
        q = fit_sarsa(data, victim.obs_dim, victim.act_dim, args.rs_updates, coef, reg_eps, args.seed,
                      tuple(args.rs_hidden), device=victim.device, log=f"rs {coef}:{reg_eps}")
        stats = rollout(victim, PGDAttacker(victim, args.pgd_steps, critic=q), args.episodes, args.seed, args.stochastic)
        print(f"  [rs {coef}:{reg_eps}] victim return {stats.mean:.1f} ± {stats.std:.1f}", flush=True)
        per_setting.append({"reg_coef": coef, "reg_eps": reg_eps, "mean": stats.mean, "std": stats.std})
        if best is None or stats.mean < best.mean:
            best = stats
    return {"stats": best, "per_setting": per_setting}


if __name__ == "__main__":
    standalone(__doc__, add_args, evaluate, lambda args: NAME)
