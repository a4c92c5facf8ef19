"""RL machinery of the learned attackers (SA-RL, PA-AD): the attack as an MDP against the frozen victim,
trained with SAC (the method scripts' Learner) or with PPO (below).

The adversary observes the victim's normalized TRUE state and is rewarded with -r. Its action is either
an observation perturbation (SA-RL: s~ = s + eps * a, a in [-1, 1]^d) or a direction in the victim's action
space (PA-AD: the victim's actor then turns it into a perturbation, see pa_ad.py).
"""
from __future__ import annotations

import os
import sys
import time
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
            learner.update(b_obs, b_act, b_rew, b_next, b_term, b_w, step)
        if log and step % max(steps // 10, 1) == 0:
            recent = f"{np.mean(returns[-10:]):.1f}" if returns else "n/a"
            print(f"  [{log}] step {step}/{steps} | victim return(10) {recent} | {time.time() - start:.0f}s", flush=True)
    return learner.actor


# --- PPO adversary --------------------------------------------------------------------------------------
class GaussianPolicy(nn.Module):
    """PPO actor-critic: Gaussian over pre-squash actions (state-independent log std); the environment
    action is tanh(u)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.pi = sac.mlp([obs_dim, *hidden, act_dim])
        self.v = sac.mlp([obs_dim, *hidden, 1])
        for net in (self.pi, self.v):  # tanh hidden units, as in the PPO literature
            for i, layer in enumerate(net):
                if isinstance(layer, nn.ReLU):
                    net[i] = nn.Tanh()
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def dist(self, obs):
        return torch.distributions.Normal(self.pi(obs), self.log_std.exp())

    def value(self, obs):
        return self.v(obs).squeeze(-1)

    def deterministic(self, obs):
        return torch.tanh(self.pi(obs))


def train_ppo(env: AttackEnv, steps: int, seed: int, hidden: tuple[int, ...] = (64, 64), n_steps: int = 2048,
              epochs: int = 10, minibatch: int = 64, lr: float = 3e-4, gamma: float = 0.99, lam: float = 0.95,
              clip: float = 0.2, ent_coef: float = 0.0, vf_coef: float = 0.5, max_grad_norm: float = 0.5,
              log: Optional[str] = None) -> GaussianPolicy:
    torch.manual_seed(seed)
    device = env.victim.device
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    policy = GaussianPolicy(obs_dim, act_dim, hidden).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr, eps=1e-5)
    scale = RunningScale(gamma)
    obs, _ = env.reset(seed=seed)
    episode_return, returns, start, done_steps = 0.0, [], time.time(), 0
    while done_steps < steps:
        rollout_len = min(n_steps, steps - done_steps)  # the last rollout may be shorter: the budget is exact
        buf = {k: [] for k in ("obs", "u", "logp", "reward", "value", "next_value", "terminated", "end")}
        for _ in range(rollout_len):
            o = torch.as_tensor(obs, device=device)
            with torch.no_grad():
                dist = policy.dist(o)
                u = dist.sample()
                logp, value = dist.log_prob(u).sum(), policy.value(o)
            next_obs, reward, terminated, truncated, info = env.step(torch.tanh(u).cpu().numpy())
            with torch.no_grad():
                next_value = policy.value(torch.as_tensor(next_obs, device=device))
            for k, v in (("obs", o), ("u", u), ("logp", logp), ("value", value), ("next_value", next_value)):
                buf[k].append(v)
            buf["reward"].append(scale(reward, terminated or truncated))
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
                       np.array(buf["terminated"]), np.array(buf["end"]), gamma, lam)
        b_obs, b_u, b_logp = torch.stack(buf["obs"]), torch.stack(buf["u"]), torch.stack(buf["logp"])
        b_adv, b_ret = torch.as_tensor(adv, device=device), torch.as_tensor(ret, device=device)
        for _ in range(epochs):
            for idx in torch.randperm(rollout_len, device=device).split(minibatch):
                dist = policy.dist(b_obs[idx])
                ratio = (dist.log_prob(b_u[idx]).sum(-1) - b_logp[idx]).exp()
                a = b_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8) if len(idx) > 1 else a
                policy_loss = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a).mean()
                value_loss = F.mse_loss(policy.value(b_obs[idx]), b_ret[idx])
                loss = policy_loss + vf_coef * value_loss - ent_coef * dist.entropy().sum(-1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
                optimizer.step()
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
    policy = build_policy(state["algo"], state["obs_dim"], state["act_dim"], tuple(state["hidden"]))
    policy.load_state_dict(state["attacker"])
    return policy.to(victim.device).eval(), state


# --- the shared flow of SA-RL and PA-AD: train per seed, save, evaluate, keep the strongest -------------------
PAPER_ATTACK_BUDGET = 2_000_000


def add_learned_args(parser, default_algo: str = "sac") -> None:
    parser.add_argument("--algo", choices=["sac", "ppo"], default=default_algo, help="RL algorithm of the attacker")
    parser.add_argument("--attack-budget", type=int, default=PAPER_ATTACK_BUDGET,
                        help="environment steps to train each attacker (default: paper scale; use e.g. 50000 on a CPU)")
    parser.add_argument("--seeds", type=int, default=3, help="attackers trained with different seeds; the strongest is kept")
    parser.add_argument("--attacker-hidden", type=int, nargs="+", default=None,
                        help="hidden sizes (default: 256 256 for SAC, 64 64 for PPO)")
    parser.add_argument("--learning-starts", type=int, default=5000, help="SAC attacker: random steps before updates")
    parser.add_argument("--ppo-steps", type=int, default=2048, help="PPO attacker: rollout length per iteration")
    parser.add_argument("--load", default=None, help="evaluate this saved attacker instead of training")
    parser.add_argument("--save-dir", default=None, help="where trained attackers go (default: next to the checkpoint)")


def run_learned_attack(victim: Victim, args, kind: str, action_dim: int,
                       realize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict:
    from attacks.common import AttackError, rollout

    name = f"{kind}_{args.algo}"
    if args.load:
        policy, _ = load_attacker(args.load, victim, kind)
        attacker = PolicyAttacker(name, policy_action_fn(policy), realize)
        return {"stats": rollout(victim, attacker, args.episodes, args.seed, args.stochastic), "attacker_path": args.load}
    if args.attack_budget <= 0 or args.seeds <= 0:
        raise AttackError("--attack-budget and --seeds must be positive")
    hidden = tuple(args.attacker_hidden or ((256, 256) if args.algo == "sac" else (64, 64)))
    save_dir = args.save_dir or os.path.join(os.path.dirname(os.path.abspath(victim.ckpt_path)), "attackers")
    stem = os.path.splitext(os.path.basename(victim.ckpt_path))[0]
    per_seed, best = [], None
    for k in range(args.seeds):
        seed = args.seed + 1000 * (k + 1)
        env = AttackEnv(victim, action_dim, realize, name)
        label = f"{name} seed {seed}"
        if args.algo == "sac":
            policy = train_sac(env, args.attack_budget, seed, hidden, min(args.learning_starts, args.attack_budget // 2),
                               log=label)
        else:
            policy = train_ppo(env, args.attack_budget, seed, hidden, n_steps=args.ppo_steps, log=label)
        policy.eval()
        path = os.path.join(save_dir, f"{stem}_{name}_seed{seed}.pt")
        save_attacker(path, policy, {"kind": kind, "algo": args.algo, "obs_dim": env.observation_space.shape[0],
                                     "act_dim": action_dim, "hidden": list(hidden), "eps": victim.eps,
                                     "victim": os.path.abspath(victim.ckpt_path), "budget": args.attack_budget,
                                     "seed": seed})
        stats = rollout(victim, PolicyAttacker(name, policy_action_fn(policy), realize), args.episodes, args.seed,
                        args.stochastic)
        print(f"  [{label}] victim return {stats.mean:.1f} ± {stats.std:.1f} (saved {path})", flush=True)
        per_seed.append({"seed": seed, "mean": stats.mean, "std": stats.std, "path": path})
        if best is None or stats.mean < best[0].mean:
            best = (stats, path)
    return {"stats": best[0], "attacker_path": best[1], "per_seed": per_seed}
