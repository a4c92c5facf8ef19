"""RL machinery of the learned attackers (SA-RL, PA-AD): the attack as an MDP against the frozen victim,
trained with SAC (the method scripts' Learner) or with PPO (below).

The adversary observes the victim's normalized TRUE state and is rewarded with -r. Its action is either
an observation perturbation (SA-RL: s~ = s + eps * a, a in [-1, 1]^d) or a direction in the victim's action
space (PA-AD: the victim's actor then turns it into a perturbation, see pa_ad.py).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac  # noqa: E402
from attacks.common import Victim, check_in_ball  # noqa: E402
from sac_ppo import RunningScale, gae  # noqa: E402  (the same PPO pieces as the SAC-PPO baseline)


class AttackEnv(gym.Env):
    """The victim's task seen by the adversary. `realize(obs_n, action) -> s~` turns the adversary's action
    in [-1, 1]^k into the observation shown to the victim; every s~ is checked against the eps-ball."""

    def __init__(self, victim: Victim, action_dim: int, realize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 name: str):
        self.victim, self.realize, self.name = victim, realize, name
        self.env = victim.make_env()
        clip = victim.normalizer.clip
        self.observation_space = gym.spaces.Box(-clip, clip, (victim.obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self.obs_n: Optional[torch.Tensor] = None

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed)
        self.obs_n = self.victim.normalize(obs)
        return self.obs_n.cpu().numpy(), info

    def step(self, action):
        action_t = torch.as_tensor(np.clip(action, -1.0, 1.0), dtype=torch.float32, device=self.victim.device)
        obs_tilde = self.realize(self.obs_n, action_t)
        check_in_ball(self.obs_n, obs_tilde, self.victim.eps, self.name)
        victim_action = self.victim.act(obs_tilde.unsqueeze(0))[0].cpu().numpy()
        obs, reward, terminated, truncated, info = self.env.step(victim_action)
        info = {**info, "victim_reward": float(reward)}
        self.obs_n = self.victim.normalize(obs)
        return self.obs_n.cpu().numpy(), -float(reward), terminated, truncated, info


def check_finite(bad, label: str, step: int) -> None:
    """`bad`: a bool, or a device-side bool tensor (read here, once)."""
    from attacks.common import AttackError

    if bool(bad):
        raise AttackError(f"{label}: the attacker's training diverged (non-finite loss at or before step {step})")


# --- SAC adversary: reuse the method scripts' SAC learner -------------------------------------------------
def train_sac(env: AttackEnv, steps: int, seed: int, hidden: tuple[int, ...] = (256, 256), learning_starts: int = 5000,
              batch_size: int = 256, log: Optional[str] = None) -> sac.Actor:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    args = sac.Args(hidden_sizes=hidden, batch_size=batch_size, per=False)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    learner = sac.Learner(args, obs_dim, act_dim, -np.ones(act_dim), np.ones(act_dim), env.victim.device)
    buffer = sac.PrioritizedReplayBuffer(max(steps, 1), obs_dim, act_dim, env.victim.device, prioritized=False,
                                         seed=seed)
    obs, _ = env.reset(seed=seed)
    episode_return, returns, start = 0.0, [], time.time()
    bad = torch.zeros((), dtype=torch.bool, device=env.victim.device)
    for step in range(1, steps + 1):
        if step <= learning_starts:
            action = rng.uniform(-1, 1, act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action = learner.actor.sample(torch.as_tensor(obs, device=env.victim.device).unsqueeze(0))[0][0].cpu().numpy()
        next_obs, reward, terminated, truncated, info = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        episode_return += info["victim_reward"]
        obs = next_obs
        if terminated or truncated:
            returns.append(episode_return)
            episode_return = 0.0
            obs, _ = env.reset()
        if step > learning_starts and buffer.size >= batch_size:
            _, b_obs, b_act, b_rew, b_next, b_term, b_w = buffer.sample(batch_size, 1.0)
            logs = learner.update(b_obs, b_act, b_rew, b_next, b_term, b_w, step)
            # device-side flag, read every 1000 steps: a diverged attacker is an error, never a (weak) result
            bad = bad | ~torch.isfinite(torch.stack([logs["losses/critic_loss"], logs["losses/actor_loss"]])).any()
        if step % 1000 == 0 or step == steps:
            check_finite(bad, log or "SAC attacker", step)
        if log and step % max(steps // 10, 1) == 0:
            recent = f"{np.mean(returns[-10:]):.1f}" if returns else "n/a"
            print(f"  [{log}] step {step}/{steps} | victim return(10) {recent} | {time.time() - start:.0f}s", flush=True)
    return learner.actor


# --- PPO adversary --------------------------------------------------------------------------------------
class GaussianPolicy(nn.Module):
    """PPO actor-critic: Gaussian over pre-squash actions (state-independent log std, initialised at
    log(initial_std)); the environment action is tanh(u)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64), initial_std: float = 1.0):
        super().__init__()
        self.pi = sac.mlp([obs_dim, *hidden, act_dim])
        self.v = sac.mlp([obs_dim, *hidden, 1])
        for net in (self.pi, self.v):  # tanh hidden units, as in the PPO literature
            for i, layer in enumerate(net):
                if isinstance(layer, nn.ReLU):
                    net[i] = nn.Tanh()
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(initial_std)))

    def dist(self, obs):
        # no argument validation: a diverged policy reaches check_finite (one clear error), not a ValueError
        return torch.distributions.Normal(self.pi(obs), self.log_std.exp(), validate_args=False)

    def value(self, obs):
        return self.v(obs).squeeze(-1)

    def policy_parameters(self) -> list:
        return [*self.pi.parameters(), self.log_std]

    def deterministic(self, obs):
        return torch.tanh(self.pi(obs))


@dataclass(frozen=True)
class PPOSettings:
    """The adversary PPO of the ATLA reference (huanzhang12/ATLA_robust_RL src/MuJoCo.json and the attack scans in
    configs/attack_ppo_*_scan.py): 2048 steps per iteration, 10 epochs of 32 minibatches for the policy and, with
    its own Adam, for the value net; GAE 0.95, gamma 0.99; returns-scaled rewards clipped to +-10; clipped value
    loss (0.2); no gradient clipping; Adam eps 1e-5. The scanned knobs: lr, value_lr, clip, ent_coef, anneal_lr,
    initial_std."""

    lr: float = 3e-4
    value_lr: float = 1e-4
    clip: float = 0.2
    ent_coef: float = 0.0
    anneal_lr: bool = False
    initial_std: float = 0.5
    n_steps: int = 2048
    epochs: int = 10
    minibatches: int = 32
    gamma: float = 0.99
    lam: float = 0.95
    value_clip: float = 0.2
    reward_clip: float = 10.0


def train_ppo(env: AttackEnv, steps: int, seed: int, hidden: tuple[int, ...] = (64, 64),
              settings: PPOSettings = PPOSettings(), log: Optional[str] = None) -> GaussianPolicy:
    torch.manual_seed(seed)
    device, cfg = env.victim.device, settings
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    policy = GaussianPolicy(obs_dim, act_dim, hidden, cfg.initial_std).to(device)
    policy_opt = torch.optim.Adam(policy.policy_parameters(), lr=cfg.lr, eps=1e-5)
    value_opt = torch.optim.Adam(policy.v.parameters(), lr=cfg.value_lr, eps=1e-5)
    iterations = max(1, math.ceil(steps / cfg.n_steps))
    scale = RunningScale(cfg.gamma)
    obs, _ = env.reset(seed=seed)
    episode_return, returns, start, done_steps, iteration = 0.0, [], time.time(), 0, 0
    while done_steps < steps:
        if cfg.anneal_lr:  # linearly to 0 over the iterations, as the reference's anneal_lr
            frac = 1.0 - iteration / iterations
            policy_opt.param_groups[0]["lr"], value_opt.param_groups[0]["lr"] = cfg.lr * frac, cfg.value_lr * frac
        iteration += 1
        rollout_len = min(cfg.n_steps, steps - done_steps)  # the last rollout may be shorter: the budget is exact
        buf = {k: [] for k in ("obs", "u", "logp", "reward", "value", "next_value", "terminated", "end")}
        for _ in range(rollout_len):
            o = torch.as_tensor(obs, device=device)
            with torch.no_grad():
                dist = policy.dist(o)
                u = dist.loc + dist.scale * torch.randn_like(dist.loc)  # (Normal.sample refuses a non-finite std)
                logp, value = dist.log_prob(u).sum(), policy.value(o)
            action = torch.tanh(u).cpu().numpy()  # the host copy every step needs anyway
            check_finite(not np.isfinite(action).all(), log or "PPO attacker", done_steps)
            next_obs, reward, terminated, truncated, info = env.step(action)
            with torch.no_grad():
                next_value = policy.value(torch.as_tensor(next_obs, device=device))
            for k, v in (("obs", o), ("u", u), ("logp", logp), ("value", value), ("next_value", next_value)):
                buf[k].append(v)
            scaled = scale(reward, terminated or truncated)
            buf["reward"].append(float(np.clip(scaled, -cfg.reward_clip, cfg.reward_clip)))
            buf["terminated"].append(float(terminated))
            buf["end"].append(float(terminated or truncated))
            episode_return += info["victim_reward"]
            obs = next_obs
            if terminated or truncated:
                returns.append(episode_return)
                episode_return = 0.0
                obs, _ = env.reset()
        done_steps += rollout_len
        values = torch.stack(buf["value"]).cpu().numpy()
        adv, ret = gae(np.array(buf["reward"]), values, torch.stack(buf["next_value"]).cpu().numpy(),
                       np.array(buf["terminated"]), np.array(buf["end"]), cfg.gamma, cfg.lam)
        b_obs, b_u, b_logp = torch.stack(buf["obs"]), torch.stack(buf["u"]), torch.stack(buf["logp"])
        b_adv = torch.as_tensor(adv, dtype=torch.float32, device=device)
        b_ret = torch.as_tensor(ret, dtype=torch.float32, device=device)
        b_old_v = torch.as_tensor(values, dtype=torch.float32, device=device)
        minibatch = max(1, rollout_len // cfg.minibatches)
        for _ in range(cfg.epochs):
            for idx in torch.randperm(rollout_len, device=device).split(minibatch):
                dist = policy.dist(b_obs[idx])
                ratio = (dist.log_prob(b_u[idx]).sum(-1) - b_logp[idx]).exp()
                a = b_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8) if len(idx) > 1 else a
                policy_loss = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                policy_loss = policy_loss - cfg.ent_coef * dist.entropy().sum(-1).mean()
                policy_opt.zero_grad(set_to_none=True)
                policy_loss.backward()
                policy_opt.step()
                v = policy.value(b_obs[idx])
                v_clipped = b_old_v[idx] + (v - b_old_v[idx]).clamp(-cfg.value_clip, cfg.value_clip)
                value_loss = torch.max((v - b_ret[idx]).pow(2), (v_clipped - b_ret[idx]).pow(2)).mean()
                value_opt.zero_grad(set_to_none=True)
                value_loss.backward()
                value_opt.step()
        check_finite(~torch.isfinite(torch.stack([policy_loss.detach(), value_loss.detach()])).any(),
                     log or "PPO attacker", done_steps)
        if log:
            recent = f"{np.mean(returns[-10:]):.1f}" if returns else "n/a"
            print(f"  [{log}] step {done_steps}/{steps} | victim return(10) {recent} | {time.time() - start:.0f}s",
                  flush=True)
    return policy


# --- learned attackers as Attacker objects ---------------------------------------------------------------
class PolicyAttacker:
    """Evaluates a trained adversary with its deterministic (mean) action."""

    def __init__(self, name: str, policy_action: Callable[[torch.Tensor], torch.Tensor],
                 realize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.name, self.policy_action, self.realize = name, policy_action, realize

    def reset(self) -> None:
        pass

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            action = self.policy_action(obs_n.unsqueeze(0))[0]
        return self.realize(obs_n, action)


def policy_action_fn(policy) -> Callable[[torch.Tensor], torch.Tensor]:
    return policy.deterministic  # both sac.Actor and GaussianPolicy map obs -> action in [-1, 1]


def build_policy(algo: str, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
    if algo == "sac":
        return sac.Actor(obs_dim, act_dim, list(hidden), -np.ones(act_dim), np.ones(act_dim))
    return GaussianPolicy(obs_dim, act_dim, hidden)


def save_attacker(path: str, policy, meta: dict) -> None:
    sac.atomic_save({"attacker": policy.state_dict(), **meta}, path)


def load_attacker(path: str, victim: Victim, expected_kind: str):
    from attacks.common import AttackError

    if not os.path.isfile(path):
        raise AttackError(f"trained attacker not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AttackError(f"{path} is not a readable attacker file ({type(e).__name__})")
    if not isinstance(state, dict) or state.get("kind") != expected_kind:
        raise AttackError(f"{path} is not a {expected_kind} attacker")
    try:
        policy = build_policy(state["algo"], state["obs_dim"], state["act_dim"], tuple(state["hidden"]))
        policy.load_state_dict(state["attacker"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise AttackError(f"{path} is not a readable attacker file ({type(e).__name__})")
    return policy.to(victim.device).eval(), state


# --- the shared flow of SA-RL and PA-AD: a search over attacker configurations, the strongest kept ------------
def add_learned_args(parser, default_algo: str = "sac") -> None:
    from attacks.search import PRESETS

    parser.add_argument("--algo", choices=["sac", "ppo"], default=default_algo, help="RL algorithm of the attacker")
    parser.add_argument("--search", choices=PRESETS, default="quick",
                        help="attacker search: quick (CPU-sized: few configurations, short budget) or paper (the "
                             "reference-sized grid and budgets: a cluster job, see attacks/search.py)")
    parser.add_argument("--attack-budget", type=int, default=None,
                        help="environment steps per attacker (default: the preset's: quick 50k; paper 1M PPO (Ant: SA-RL "
                             "5M, PA-AD 10M), SAC the victim's own budget)")
    parser.add_argument("--seeds", type=int, default=None, help="SAC attackers' seeds (default: quick 1, paper 4)")
    parser.add_argument("--attacker-hidden", type=int, nargs="+", default=None,
                        help="hidden sizes (default: 256 256 for SAC, 64 64 for PPO)")
    parser.add_argument("--learning-starts", type=int, default=5000, help="SAC attacker: random steps before updates")
    parser.add_argument("--ppo-steps", type=int, default=2048, help="PPO attacker: rollout length per iteration")
    parser.add_argument("--load", default=None, help="evaluate this saved attacker instead of searching")
    parser.add_argument("--save-dir", default=None, help="where trained attackers go (default: next to the checkpoint)")


def run_learned_attack(victim: Victim, args, kind: str, action_dim: int,
                       realize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict:
    from attacks.common import rollout
    from attacks.search import run_search

    name = f"{kind}_{args.algo}"
    if args.load:
        policy, _ = load_attacker(args.load, victim, kind)
        attacker = PolicyAttacker(name, policy_action_fn(policy), realize)
        return {"stats": rollout(victim, attacker, args.episodes, args.seed, args.stochastic), "attacker_path": args.load}
    return run_search(victim, args, kind, action_dim, realize)
