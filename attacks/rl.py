"""RL machinery of the learned attackers (SA-RL, PA-AD): the attack as an MDP against the frozen victim, and the
attackers' own trainers, SAC and PPO, defined here so that editing a method script never changes an attacker.

The adversary observes the victim's normalized TRUE state and is rewarded with -r. Its action is either
an observation perturbation (SA-RL: s~ = s + eps * a, a in [-1, 1]^d) or a direction in the victim's action
space (PA-AD: the victim's actor then turns it into a perturbation, see pa_ad.py).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.common import Progress, Victim, check_in_ball
from attacks.contract import AttackError, atomic_save
from attacks.nets import TanhGaussianActor, TwinCritic, mlp


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

    def state(self) -> Optional[dict]:
        """The simulator's full state mid-episode (MuJoCo tasks; else None: no resumable training)."""
        unwrapped = self.env.unwrapped
        if not (hasattr(unwrapped, "model") and hasattr(unwrapped, "data")) or self.obs_n is None:
            return None
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(unwrapped.model, spec))
        mujoco.mj_getState(unwrapped.model, unwrapped.data, physics, spec)
        return {"physics": torch.from_numpy(physics), "elapsed_steps": self.env.get_wrapper_attr("_elapsed_steps"),
                "np_random": unwrapped.np_random.bit_generator.state, "obs_n": self.obs_n.cpu()}

    def load_state(self, state: dict) -> np.ndarray:
        import mujoco

        unwrapped = self.env.unwrapped
        self.env.reset()  # the wrappers' bookkeeping (order enforcing), then the saved state over it
        mujoco.mj_setState(unwrapped.model, unwrapped.data, state["physics"].numpy(),
                           mujoco.mjtState.mjSTATE_INTEGRATION)
        self.env.set_wrapper_attr("_elapsed_steps", state["elapsed_steps"])
        unwrapped.np_random.bit_generator.state = state["np_random"]
        self.obs_n = state["obs_n"].to(self.victim.device)
        return self.obs_n.cpu().numpy()


def check_finite(bad, label: str, step: int) -> None:
    """`bad`: a bool, or a device-side bool tensor (read here, once)."""
    if bool(bad):
        raise AttackError(f"{label}: the attacker's training diverged (non-finite loss at or before step {step})")


# --- resumable training: the whole training state every `save_every` steps, so a stopped search continues ----
SAVE_EVERY = 10_000
REFILLED_AT = "replay_buffer_refilled_at"  # the record's list of steps at which a SAC attacker's buffer restarted empty


def save_progress(path: Optional[str], key: dict, env: AttackEnv, loop: Callable[[], dict]) -> None:
    """Everything an exact continuation needs: `loop()` (the trainer's networks, optimizers and counters), the
    environment mid-episode and the random generators. Not written for a task without a restorable state."""
    state = env.state() if path else None
    if state is not None:
        cuda = torch.cuda.get_rng_state_all() if env.victim.device.type == "cuda" else []
        atomic_save({"key": key, "env": state, "torch_rng": torch.get_rng_state(), "cuda_rng": cuda, **loop()}, path)


def load_progress(path: Optional[str], key: dict, env: AttackEnv, label: str) -> Optional[dict]:
    """The saved training state of this very attacker (`key`: its settings, victim and device), or None. A damaged
    file, or one of another attacker under the same name, costs that attacker's progress (one line), not the search."""
    if not path or not os.path.isfile(path):
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        matches = saved.get("key") == key
    except Exception as e:  # saves are atomic: damaged outside this code
        print(f"  [{label}] {path} is not a readable training state ({type(e).__name__}): training from the start",
              flush=True)
        return None
    if not matches:
        print(f"  [{label}] {path} holds the training of another attacker, victim or device: training from the start",
              flush=True)
        return None
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    saved["obs"] = env.load_state(saved["env"])
    print(f"  [{label}] continuing its training at step {saved['step']} ({path})", flush=True)
    return saved


def portable_progress(src: str, dst: str) -> None:
    """A copy of the training state at `src` that a fresh clone can continue from: a SAC attacker's without its
    replay buffer (its continuation refills it from empty, train_sac), a PPO attacker's whole (it keeps none)."""
    try:
        saved = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # saves are atomic: damaged outside this code
        raise AttackError(f"{src} is not a readable training state ({type(e).__name__})") from e
    saved.pop("buffer", None)
    atomic_save(saved, dst)


# --- SAC adversary ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SACSettings:
    """The SAC attacker: the SAC family's base settings (paper Table 2) with uniform replay, one update per step."""

    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005  # target critic Polyak rate
    lr: float = 3e-4  # actor, critics and temperature
    huber_delta: float = 1.0
    initial_alpha: float = 1.0


class SACLearner:
    """Tanh-Gaussian actor in [-1, 1]^k, twin critics with min-target and Huber loss, automatic temperature (target
    entropy -k)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], device, cfg: SACSettings = SACSettings()):
        self.cfg = cfg
        self.actor = TanhGaussianActor(obs_dim, act_dim, list(hidden), -np.ones(act_dim), np.ones(act_dim)).to(device)
        self.critic = TwinCritic(obs_dim, act_dim, list(hidden)).to(device)
        self.critic_target = TwinCritic(obs_dim, act_dim, list(hidden)).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.initial_alpha), device=device, requires_grad=True)
        self.target_entropy = -float(act_dim)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, fused=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.lr, fused=True)

    PARTS = ("actor", "critic", "critic_target", "actor_optimizer", "critic_optimizer", "alpha_optimizer")

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k).state_dict() for k in self.PARTS}, "log_alpha": self.log_alpha.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        for k in self.PARTS:
            getattr(self, k).load_state_dict(state[k])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])  # in place: the optimizer holds this tensor

    def update(self, obs, actions, rewards, next_obs, terminated) -> tuple[torch.Tensor, torch.Tensor]:
        """One SAC step; returns the (critic, actor) losses, detached."""
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(next_obs)
            next_value = self.critic_target(next_obs, next_action).min(0).values - alpha * next_log_prob
            target = rewards + self.cfg.gamma * (1.0 - terminated) * next_value
        q = self.critic(obs, actions)
        critic_loss = F.huber_loss(q, target.expand_as(q), reduction="none", delta=self.cfg.huber_delta).sum(0).mean()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        self.critic.requires_grad_(False)
        action, log_prob = self.actor.sample(obs)
        actor_loss = (alpha * log_prob - self.critic(obs, action).min(0).values).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        self.critic.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.cfg.tau)
        return critic_loss.detach(), actor_loss.detach()


class ReplayBuffer:
    """Uniform replay of (s, a, r, s', terminated); its own seeded sampling generator."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device, seed: int):
        self.capacity, self.device = capacity, device
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.actions = torch.zeros(capacity, act_dim, device=device)
        self.rewards = torch.zeros(capacity, device=device)
        self.terminated = torch.zeros(capacity, device=device)
        self.generator = torch.Generator(device).manual_seed(seed)
        self.pos, self.size = 0, 0

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        i = self.pos
        self.obs[i] = torch.as_tensor(obs, device=self.device)
        self.next_obs[i] = torch.as_tensor(next_obs, device=self.device)
        self.actions[i] = torch.as_tensor(action, device=self.device)
        self.rewards[i] = float(reward)
        self.terminated[i] = float(terminated)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k)[:self.size].cpu() for k in self.FIELDS}, "pos": self.pos, "size": self.size,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for k in self.FIELDS:
            getattr(self, k)[:self.size] = state[k].to(self.device)
        self.generator.set_state(state["generator"])

    def sample(self, batch_size: int):
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx]


def train_sac(env: AttackEnv, steps: int, seed: int, hidden: tuple[int, ...] = (256, 256), learning_starts: int = 5000,
              batch_size: int = 256, log: Optional[str] = None,
              on_update: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
              progress_path: Optional[str] = None, progress_key: Optional[dict] = None,
              save_every: Optional[int] = None, notes: Optional[dict] = None) -> TanhGaussianActor:
    """`on_update(step, critic_loss, actor_loss)`: called after every update (the golden test records losses).
    `progress_path`: the training state is saved there every `save_every` steps and continued from when present;
    a state without its replay buffer (portable_progress) continues with the buffer refilled from empty, and every
    step at which that happened is listed in `notes[REFILLED_AT]`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = env.victim.device
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    learner = SACLearner(obs_dim, act_dim, hidden, device, SACSettings(batch_size=batch_size))
    buffer = ReplayBuffer(max(steps, 1), obs_dim, act_dim, device, seed)
    episode_return, returns, progress, start = 0.0, [], Progress(steps), 1
    bad = torch.zeros((), dtype=torch.bool, device=device)
    save_every = save_every or SAVE_EVERY
    key = {**(progress_key or {}), "algo": "sac", "steps": steps, "seed": seed, "hidden": list(hidden),
           "learning_starts": learning_starts, "batch_size": batch_size, "device": str(device)}
    saved = load_progress(progress_path, key, env, log or "SAC attacker")
    refills: list = []
    if saved is None:
        obs, _ = env.reset(seed=seed)
    else:
        learner.load_state_dict(saved["learner"])
        refills = list(saved.get("buffer_refills", []))
        if "buffer" in saved:
            buffer.load_state_dict(saved["buffer"])
        else:  # a portable state: the continuation differs from an uncut run's, and the record says where
            refills.append(saved["step"])
            print(f"  [{log or 'SAC attacker'}] its replay buffer was not saved with it: refilling from empty at "
                  f"step {saved['step']}", flush=True)
        rng.bit_generator.state = saved["numpy_rng"]
        obs, episode_return, returns, start = saved["obs"], saved["episode_return"], saved["returns"], saved["step"] + 1
        bad = bad | saved["bad"].to(device)
        progress.last_done = saved["step"]
    for step in range(start, steps + 1):
        if step <= learning_starts:
            action = rng.uniform(-1, 1, act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action = learner.actor.sample(torch.as_tensor(obs, device=device).unsqueeze(0))[0][0].cpu().numpy()
        next_obs, reward, terminated, truncated, info = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated)
        episode_return += info["victim_reward"]
        obs = next_obs
        if terminated or truncated:
            returns.append(episode_return)
            episode_return = 0.0
            obs, _ = env.reset()
        if step > learning_starts and buffer.size >= batch_size:
            critic_loss, actor_loss = learner.update(*buffer.sample(batch_size))
            if on_update is not None:
                on_update(step, critic_loss, actor_loss)
            # device-side flag, read every 1000 steps: a diverged attacker is an error, never a (weak) result
            bad = bad | ~torch.isfinite(torch.stack([critic_loss, actor_loss])).any()
        if step % 1000 == 0 or step == steps:
            check_finite(bad, log or "SAC attacker", step)
        if log and step % max(steps // 10, 1) == 0:
            recent = f"{np.mean(returns[-10:]):.1f}" if returns else "n/a"
            print(f"  [{log}] step {step}/{steps} | victim return(10) {recent} | {progress(step)}", flush=True)
        if step % save_every == 0 and step < steps:
            save_progress(progress_path, key, env, lambda: {
                "step": step, "learner": learner.state_dict(), "buffer": buffer.state_dict(), "returns": returns,
                "numpy_rng": rng.bit_generator.state, "episode_return": episode_return, "bad": bad.cpu(),
                "buffer_refills": refills})
    if notes is not None and refills:
        notes[REFILLED_AT] = refills
    return learner.actor


# --- PPO adversary --------------------------------------------------------------------------------------
class GaussianPolicy(nn.Module):
    """PPO actor-critic: Gaussian over pre-squash actions (state-independent log std, initialised at
    log(initial_std)); the environment action is tanh(u)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64), initial_std: float = 1.0):
        super().__init__()
        self.pi = mlp([obs_dim, *hidden, act_dim], nn.Tanh)  # tanh hidden units, as in the PPO literature
        self.v = mlp([obs_dim, *hidden, 1], nn.Tanh)
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


class RunningScale:
    """Scales rewards by the running std of the discounted return (PPO's usual reward normalization)."""

    def __init__(self, gamma: float):
        self.gamma, self.ret, self.count, self.mean, self.m2 = gamma, 0.0, 0, 0.0, 0.0

    def state_dict(self) -> dict:
        return {"ret": self.ret, "count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.ret, self.count, self.mean, self.m2 = state["ret"], state["count"], state["mean"], state["m2"]

    def __call__(self, reward: float, done: bool) -> float:
        self.ret = self.ret * self.gamma + reward
        self.count += 1
        delta = self.ret - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (self.ret - self.mean)
        if done:
            self.ret = 0.0
        std = math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0
        return reward / (std + 1e-8)


def gae(rewards, values, next_values, terminated, episode_end, gamma: float, lam: float):
    """Generalized advantage estimation over one rollout. `next_values[t]` is V(s_{t+1}) of the true next
    state (also at a truncation); `terminated` cuts the bootstrap, `episode_end` cuts the recursion."""
    advantages = np.zeros_like(rewards)
    last = 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * (1.0 - terminated[t]) * next_values[t] - values[t]
        last = delta + gamma * lam * (1.0 - episode_end[t]) * last
        advantages[t] = last
    return advantages, advantages + values


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
              settings: PPOSettings = PPOSettings(), log: Optional[str] = None,
              on_update: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
              progress_path: Optional[str] = None, progress_key: Optional[dict] = None,
              save_every: Optional[int] = None) -> GaussianPolicy:
    """`on_update(steps done, policy loss, value loss)`: called after every iteration with its last minibatch's.
    `progress_path`: the training state is saved there after the first iteration past each multiple of
    `save_every` steps, and continued from when present."""
    torch.manual_seed(seed)
    device, cfg = env.victim.device, settings
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    policy = GaussianPolicy(obs_dim, act_dim, hidden, cfg.initial_std).to(device)
    policy_opt = torch.optim.Adam(policy.policy_parameters(), lr=cfg.lr, eps=1e-5)
    value_opt = torch.optim.Adam(policy.v.parameters(), lr=cfg.value_lr, eps=1e-5)
    iterations = max(1, math.ceil(steps / cfg.n_steps))
    scale = RunningScale(cfg.gamma)
    episode_return, returns, progress, done_steps, iteration = 0.0, [], Progress(steps), 0, 0
    save_every = save_every or SAVE_EVERY
    key = {**(progress_key or {}), "algo": "ppo", "steps": steps, "seed": seed, "hidden": list(hidden),
           "settings": dataclasses.asdict(cfg), "device": str(device)}
    saved = load_progress(progress_path, key, env, log or "PPO attacker")
    if saved is None:
        obs, _ = env.reset(seed=seed)
    else:
        for part, name in ((policy, "policy"), (policy_opt, "policy_opt"), (value_opt, "value_opt"),
                           (scale, "scale")):
            part.load_state_dict(saved[name])
        obs, episode_return, returns = saved["obs"], saved["episode_return"], saved["returns"]
        done_steps, iteration = saved["step"], saved["iteration"]
        progress.last_done = done_steps
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
        if on_update is not None:
            on_update(done_steps, policy_loss.detach(), value_loss.detach())
        check_finite(~torch.isfinite(torch.stack([policy_loss.detach(), value_loss.detach()])).any(),
                     log or "PPO attacker", done_steps)
        if log:
            recent = f"{np.mean(returns[-10:]):.1f}" if returns else "n/a"
            print(f"  [{log}] step {done_steps}/{steps} | victim return(10) {recent} | {progress(done_steps)}",
                  flush=True)
        if done_steps // save_every > (done_steps - rollout_len) // save_every and done_steps < steps:
            save_progress(progress_path, key, env, lambda: {
                "step": done_steps, "iteration": iteration, "policy": policy.state_dict(), "returns": returns,
                "policy_opt": policy_opt.state_dict(), "value_opt": value_opt.state_dict(),
                "scale": scale.state_dict(), "episode_return": episode_return})
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
    return policy.deterministic  # both TanhGaussianActor and GaussianPolicy map obs -> action in [-1, 1]


def build_policy(algo: str, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
    if algo == "sac":
        return TanhGaussianActor(obs_dim, act_dim, list(hidden), -np.ones(act_dim), np.ones(act_dim))
    return GaussianPolicy(obs_dim, act_dim, hidden)


def save_attacker(path: str, policy, meta: dict) -> None:
    atomic_save({"attacker": policy.state_dict(), **meta}, path)


def load_attacker(path: str, victim: Victim, expected_kind: str):
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
