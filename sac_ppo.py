"""SAC-PPO: explicit alternating adversarial training (SPEC §6), the sample-hungry baseline VALT removes.

A SAC agent (sac.py) and a PPO adversary that perturbs the agent's observations (s~ = s + eps tanh(u), SA-RL
style) or, with --pa, directs it in action space (PA-AD style, the paper's PA-SAC-PPO on Ant). The adversary
collects its OWN on-policy rollouts against the current agent with reward -r: those environment steps are
counted and logged separately. Adversary iterations (2048 steps each) are spread evenly over the agent's
steps; policy evaluation and improvement of the agent use adversary samples, like VALT-SOFT.

    python sac_ppo.py --env-id HalfCheetah-v4
    python sac_ppo.py --env-id Ant-v4 --pa
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

METHOD = "sac_ppo"
CHECKPOINT_FORMAT = 1

# --- Configuration ---------------------------------------------------------------------------------
# Per-task defaults, keyed by the env id's prefix ("Hopper-v4" -> "Hopper").
ATTACK_EPS = {"Hopper": 0.075, "Walker2d": 0.05, "HalfCheetah": 0.15, "Ant": 0.15}  # SPEC §1
TOTAL_TIMESTEPS = {"Hopper": 500_000, "Walker2d": 1_500_000, "HalfCheetah": 1_000_000, "Ant": 3_000_000}
# The literature's Ant has 111 observation dims (contact forces included), SPEC §9.
DEFAULT_ENV_KWARGS = {"Ant-v4": {"use_contact_forces": True}}
# SAC-PPO, paper Table 4: PPO adversary iterations over the whole run, behaviour adversary ratio, "+reg."
# coefficient and the linear ramp of the regulariser's radius (start, end step).
ADV_ITERATIONS = {"Hopper": 2441, "Walker2d": 2441, "HalfCheetah": 2441, "Ant": 4882}
# The PPO adversary's own settings, paper Table 4 (SPEC §6): policy and value learning rates (separate Adam
# optimizers, as in the ATLA/SA-RL reference PPO) and the entropy coefficient.
ADV_POLICY_LR = {"Hopper": 3e-5, "Walker2d": 3e-3, "HalfCheetah": 3e-5, "Ant": 1e-4}
ADV_VALUE_LR = {"Hopper": 3e-6, "Walker2d": 1e-3, "HalfCheetah": 1e-5, "Ant": 1e-5}
ADV_ENT_COEF = {"Hopper": 1e-3, "Walker2d": 3e-3, "HalfCheetah": 1e-3, "Ant": 1e-3}
ADV_RATIO = {"Hopper": 0.5, "Walker2d": 0.5, "HalfCheetah": 0.5, "Ant": 0.5}
REG_COEF = {"Hopper": 300.0, "Walker2d": 10.0, "HalfCheetah": 30.0, "Ant": 30.0}
REG_EPS_RAMP = {"Hopper": (100_000, 400_000), "Walker2d": (100_000, 1_300_000), "HalfCheetah": (100_000, 800_000),
                "Ant": (100_000, 2_700_000)}

@dataclass
class Args:
    env_id: str = "Hopper-v4"  # Gymnasium environment id (MuJoCo -v4 tasks for the paper's settings)
    env_kwargs: str = ""  # extra gym.make kwargs as JSON, merged over the defaults (Ant-v4: {"use_contact_forces": true})
    seed: int = 1  # seed of python, numpy, torch and the environment
    total_timesteps: Optional[int] = None
    """environment steps; default per task (SPEC §6: Hopper 0.5M, HalfCheetah 1M, Walker2d 1.5M, Ant 3M)"""
    learning_starts: int = 5000  # uniform random actions (and no updates) before this step
    buffer_size: int = 1_000_000
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005  # target critic Polyak rate
    policy_lr: float = 3e-4
    q_lr: float = 3e-4
    alpha_lr: float = 3e-4
    hidden_sizes: tuple[int, ...] = (256, 256)
    autotune: bool = True  # learn the temperature alpha (otherwise alpha stays at --alpha)
    alpha: float = 1.0  # initial (or, with --no-autotune, fixed) temperature
    target_entropy: Optional[float] = None
    """entropy target of the temperature; default -dim(A) (the paper raises it for Hopper)"""
    huber_delta: float = 1.0  # Huber (smooth L1) threshold of the critic loss
    per: bool = True  # proportional prioritized replay (off: uniform replay, unit weights)
    per_alpha: float = 0.6
    per_beta_start: float = 0.4  # importance-sampling exponent, annealed linearly to 1.0 over training
    per_eps: float = 1e-6
    obs_clip: float = 10.0  # normalized observations are clipped to [-obs_clip, obs_clip]
    attack_eps: Optional[float] = None
    """l_inf attack radius in normalized units stored in the checkpoint; default per task (SPEC §1)"""
    eval_every: int = 10_000  # steps between clean deterministic evaluations (0: only at the end)
    eval_episodes: int = 10
    log_every: int = 1000  # steps between console progress lines and scalar logs
    save_every: int = 50_000  # steps between checkpoints (the final one is always written)
    save_path: Optional[str] = None  # checkpoint file; default runs/{run_name}/model.pt
    save_buffer: bool = False  # also write the replay buffer next to each checkpoint (needed for an exact --resume)
    keep_checkpoints: bool = False  # also keep every periodic checkpoint as {save_path stem}_step{N}.pt
    resume: Optional[str] = None  # continue the run stored in this checkpoint (optimizers, normalizer, RNGs, step counter)
    run_name: Optional[str] = None  # default {env_id}__{method}__{seed}__{unix time}
    cuda: bool = True  # use CUDA when available
    compile: bool = False  # torch.compile the actor and critics (for GPUs; on CPU it is slower). Same math up to float rounding
    threads: Optional[int] = None  # torch intra-op threads (default: torch's choice)
    # --- SAC-PPO ---
    pa: bool = False  # PA-AD adversary: a director in action space realised by PGD on the agent's actor (paper: Ant)
    pa_steps: int = 10  # PGD steps that realise the director's direction
    adv_iterations: Optional[int] = None
    """PPO iterations over the run, interleaved evenly with the agent's steps; default per task (2441, Ant 4882)"""
    adv_ppo_steps: int = 2048  # adversary environment steps per PPO iteration (its own rollouts, counted separately)
    adv_policy_lr: Optional[float] = None  # Adam lr of the adversary's policy; default per task (Table 4)
    adv_value_lr: Optional[float] = None  # Adam lr of the adversary's value network (its own optimizer); default per task
    adv_hidden_sizes: tuple[int, ...] = (64, 64)
    adv_epochs: int = 10
    adv_minibatch: int = 64
    adv_gae_lambda: float = 0.95
    adv_clip: float = 0.2
    adv_ent_coef: Optional[float] = None  # entropy bonus of the adversary's PPO loss; default per task (Table 4)
    adv_vf_coef: float = 0.5
    adv_max_grad_norm: float = 0.5
    adv_ratio: Optional[float] = None  # fraction of the agent's data collected under the adversary; default per task (0.5)
    adv_ratio_per_step: bool = False  # draw perturbed/clean per environment step instead of per episode (default: per episode)
    reg_coef: Optional[float] = None  # coefficient of the SA regulariser ("+reg."); default per task (Table 5); 0 turns it off
    reg_sgld_steps: int = 2
    reg_sgld_beta: float = 1e-5  # SGLD inverse temperature of the regulariser's search: noise sqrt(2*step*beta)/(i+2) (SA-PPO: 1e-5)
    reg_distance: str = "mse"
    """regulariser distance: "mse" of deterministic actions (SA-DDPG) or "kl" of the Gaussians (SA-PPO)"""
    reg_eps_start_step: Optional[int] = None  # the regulariser's radius ramps 0 -> eps between these steps; default per task
    reg_eps_end_step: Optional[int] = None


# --- Environment -----------------------------------------------------------------------------------
class UserError(Exception):
    """Bad input: reported as one line, exit code 2."""


class Diverged(Exception):
    """A non-finite loss or parameter: the run stops without saving, reported as one line, exit code 3."""


class Preempted(Exception):
    """SIGTERM or SIGINT: the run saved a checkpoint and stops, exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def task_name(env_id: str) -> str:
    return env_id.split("-")[0]


def parse_env_kwargs(env_id: str, env_kwargs: str) -> dict:
    kwargs = dict(DEFAULT_ENV_KWARGS.get(env_id, {}))
    if env_kwargs:
        try:
            extra = json.loads(env_kwargs)
        except json.JSONDecodeError as e:
            raise UserError(f"--env-kwargs is not valid JSON ({e}): {env_kwargs!r}")
        if not isinstance(extra, dict):
            raise UserError(f"--env-kwargs must be a JSON object, got {env_kwargs!r}")
        kwargs.update(extra)
    return kwargs


def make_env(env_id: str, env_kwargs: dict) -> gym.Env:
    if env_id not in gym.registry:
        raise UserError(f"unknown environment id {env_id!r} (e.g. Hopper-v4, HalfCheetah-v4, Walker2d-v4, Ant-v4)")
    try:
        with warnings.catch_warnings():
            # The -v4 tasks are the literature's (SPEC §9); gymnasium's "upgrade to v5" notice is noise here.
            warnings.filterwarnings("ignore", message=".*is out of date.*")
            env = gym.make(env_id, **env_kwargs)
    except TypeError as e:
        raise UserError(f"cannot make {env_id} with kwargs {env_kwargs}: {e}")
    if not isinstance(env.action_space, gym.spaces.Box):
        raise UserError(f"{env_id} has a {type(env.action_space).__name__} action space; SAC needs a continuous Box")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise UserError(f"{env_id} needs a flat Box observation space, got {env.observation_space}")
    return env


def get_env_state(env: gym.Env) -> Optional[dict]:
    """Full simulator state of a MuJoCo env (for an exact resume mid-episode), else None."""
    unwrapped = env.unwrapped
    if not (hasattr(unwrapped, "model") and hasattr(unwrapped, "data")):
        return None
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    physics = np.empty(mujoco.mj_stateSize(unwrapped.model, spec))
    mujoco.mj_getState(unwrapped.model, unwrapped.data, physics, spec)
    return {"physics": torch.from_numpy(physics), "elapsed_steps": env.get_wrapper_attr("_elapsed_steps"),  # TimeLimit
            "np_random": unwrapped.np_random.bit_generator.state}


def set_env_state(env: gym.Env, state: dict) -> None:
    import mujoco

    unwrapped = env.unwrapped
    mujoco.mj_setState(unwrapped.model, unwrapped.data, state["physics"].numpy(), mujoco.mjtState.mjSTATE_INTEGRATION)
    env.set_wrapper_attr("_elapsed_steps", state["elapsed_steps"])
    unwrapped.np_random.bit_generator.state = state["np_random"]


# --- Observation normalizer ------------------------------------------------------------------------
class RunningNormalizer:
    """Running mean/variance of raw observations (parallel Welford update in float64).

    The replay buffer stores raw observations and normalizes them at sampling time with the current
    statistics, so acting and learning always see the same map. Attack radii live in this
    normalized space (SPEC §1).
    """

    def __init__(self, dim: int, clip: float, device: torch.device):
        self.mean = np.zeros(dim, np.float64)
        self.var = np.ones(dim, np.float64)
        self.count = 1e-4
        self.clip = clip
        self.device = device
        self._sync()

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.mean.shape[0])
        batch_mean, batch_var, n = x.mean(0), x.var(0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total
        self._sync()

    def _sync(self) -> None:
        self.mean_t = torch.as_tensor(self.mean, dtype=torch.float32, device=self.device)
        self.std_t = torch.as_tensor(np.sqrt(self.var + 1e-8), dtype=torch.float32, device=self.device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean_t) / self.std_t).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"mean": torch.from_numpy(self.mean.copy()), "var": torch.from_numpy(self.var.copy()),
                "count": float(self.count), "clip": float(self.clip)}

    def load_state_dict(self, state: dict) -> None:
        self.mean = state["mean"].numpy().astype(np.float64)
        self.var = state["var"].numpy().astype(np.float64)
        self.count, self.clip = float(state["count"]), float(state["clip"])
        self._sync()


# --- Prioritized replay ----------------------------------------------------------------------------
class SumTree:
    """Binary sum-tree over `capacity` priorities, one float64 tensor on the buffer's device, so that sampling
    and priority updates never leave it (no host sync per update, on a GPU too). Leaf writes are immediate;
    the sums above written leaves are recomputed level by level before the next search."""

    def __init__(self, capacity: int, device: torch.device):
        self.leaves = 1 << max(0, (capacity - 1).bit_length())
        self.depth = self.leaves.bit_length() - 1
        self.tree = torch.zeros(2 * self.leaves, dtype=torch.float64, device=device)
        self.pairs = self.tree.view(-1, 2)  # pairs[p] = (tree[2p], tree[2p+1]): the children of node p
        self.stale: list[torch.Tensor] = []  # leaf positions written since the last propagation

    @property
    def total(self) -> torch.Tensor:
        self.propagate()
        return self.tree[1]

    def update(self, indices: torch.Tensor, priorities: torch.Tensor) -> None:
        """Sets leaves; an index given twice keeps its larger priority (order-free, so deterministic on GPUs)."""
        pos = torch.as_tensor(indices, device=self.tree.device) + self.leaves
        priorities = torch.as_tensor(priorities, dtype=torch.float64, device=self.tree.device)
        self.tree.scatter_reduce_(0, pos, priorities, "amax", include_self=False)
        self.stale.append(pos)

    def propagate(self) -> None:
        if not self.stale:
            return
        pos = torch.cat(self.stale)
        self.stale = []
        for _ in range(self.depth):  # repeated parents get the same sum: no need to deduplicate
            pos = pos >> 1
            self.tree[pos] = self.pairs[pos].sum(1)

    def rebuild(self, priorities: torch.Tensor) -> None:
        """Sets the first len(priorities) leaves (the rest 0) and recomputes every internal node."""
        self.tree.zero_()
        self.tree[self.leaves:self.leaves + len(priorities)] = priorities.to(self.tree)
        level = self.leaves
        while level > 1:
            self.tree[level // 2:level] = self.pairs[level // 2:level].sum(1)
            level //= 2
        self.stale = []

    def find(self, values: torch.Tensor) -> torch.Tensor:
        """Index i of each value v with prefix(i) <= v < prefix(i+1)."""
        self.propagate()
        idx = torch.ones(len(values), dtype=torch.long, device=self.tree.device)
        for _ in range(self.depth):
            left = self.pairs[idx, 0]
            go_right = values >= left
            values = torch.where(go_right, values - left, values)
            idx = 2 * idx + go_right
        return idx - self.leaves


class PrioritizedReplayBuffer:
    """Proportional PER (Schaul et al. 2016) over raw transitions; uniform when `prioritized=False`.

    Storage, sum-tree and the sampling generator all live on `device`.
    """

    def __init__(self, capacity, obs_dim, act_dim, device, prioritized=True, alpha=0.6, eps=1e-6, seed=0):
        self.capacity, self.device, self.prioritized = capacity, device, prioritized
        self.alpha, self.eps = alpha, eps
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.actions = torch.zeros(capacity, act_dim, device=device)
        self.rewards = torch.zeros(capacity, device=device)
        self.terminated = torch.zeros(capacity, device=device)
        self.tree = SumTree(capacity, device)
        self.max_priority = torch.ones((), dtype=torch.float64, device=device)
        self.generator = torch.Generator(device).manual_seed(seed)  # replay sampling only
        self.pos, self.size = 0, 0

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        i = self.pos
        self.obs[i] = torch.as_tensor(obs, device=self.device)
        self.next_obs[i] = torch.as_tensor(next_obs, device=self.device)
        self.actions[i] = torch.as_tensor(action, device=self.device)
        self.rewards[i] = float(reward)
        self.terminated[i] = float(terminated)
        if self.prioritized:  # new transitions get the highest priority seen so far: each is replayed soon
            self.tree.update(torch.tensor([i]), (self.max_priority**self.alpha).reshape(1))
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, beta: float):
        """Returns (indices, obs, actions, rewards, next_obs, terminated, importance weights), all on the device."""
        if self.prioritized:
            total = self.tree.total
            # Stratified sampling: one draw per equal-mass segment of the priority line.
            u = torch.rand(batch_size, dtype=torch.float64, device=self.device, generator=self.generator)
            values = (torch.arange(batch_size, device=self.device) + u) * (total / batch_size)
            idx = self.tree.find(torch.minimum(values, total * (1 - 1e-12))).clamp_(max=self.size - 1)
            probs = self.tree.tree[idx + self.tree.leaves] / total
            weights = (self.size * probs) ** (-beta)
            weights = (weights / weights.max()).float()  # normalized by the batch maximum, so weights <= 1
        else:
            idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
            weights = torch.ones(batch_size, device=self.device)
        return (idx, self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx],
                self.terminated[idx], weights)

    def update_priorities(self, indices: torch.Tensor, td_errors: torch.Tensor) -> None:
        if not self.prioritized:
            return
        priorities = td_errors.detach().abs().double() + self.eps
        self.max_priority = torch.maximum(self.max_priority, priorities.max())
        self.tree.update(indices, priorities**self.alpha)

    def state_dict(self) -> dict:
        n = self.size
        return {"obs": self.obs[:n].cpu(), "next_obs": self.next_obs[:n].cpu(), "actions": self.actions[:n].cpu(),
                "rewards": self.rewards[:n].cpu(), "terminated": self.terminated[:n].cpu(),
                "priorities": self.tree.tree[self.tree.leaves:self.tree.leaves + n].cpu(),
                "max_priority": float(self.max_priority), "generator": self.generator.get_state(),
                "pos": self.pos, "size": self.size, "capacity": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise UserError(f"saved replay buffer has capacity {state['capacity']}, this run {self.capacity}")
        n = state["size"]
        for name in ("obs", "next_obs", "actions", "rewards", "terminated"):
            getattr(self, name)[:n] = state[name].to(self.device)
        self.tree.rebuild(state["priorities"])
        self.max_priority = torch.tensor(state["max_priority"], dtype=torch.float64, device=self.device)
        self.generator.set_state(state["generator"])
        self.pos, self.size = state["pos"], n


# --- Networks --------------------------------------------------------------------------------------
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def mlp(sizes: list[int], activation=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Tanh-squashed diagonal Gaussian policy, rescaled to the action bounds."""

    def __init__(self, obs_dim, act_dim, hidden_sizes, action_low, action_high):
        super().__init__()
        self.trunk = mlp([obs_dim, *hidden_sizes])
        self.trunk.append(nn.ReLU())
        self.mean = nn.Linear(hidden_sizes[-1], act_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], act_dim)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs):
        h = self.trunk(obs)
        log_std = torch.tanh(self.log_std(h))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return self.mean(h), log_std

    def sample(self, obs, dist=None):
        """Reparameterized action and its log-density (tanh and scale Jacobians included); `dist` = self(obs)
        when the caller already has it."""
        mean, log_std = self(obs) if dist is None else dist
        noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
        log_jacobian = 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh)) + torch.log(self.action_scale)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi) - log_jacobian).sum(-1)
        return torch.tanh(pre_tanh) * self.action_scale + self.action_bias, log_prob

    def deterministic(self, obs):
        mean, _ = self(obs)
        return torch.tanh(mean) * self.action_scale + self.action_bias


class TwinCritic(nn.Module):
    """Both Q-networks in one module: weights stacked on a leading axis of size 2, so a single
    batched matmul per layer evaluates the pair. forward returns Q of shape [2, batch]."""

    def __init__(self, obs_dim, act_dim, hidden_sizes):
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden_sizes, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialization, per critic
            self.weights.append(nn.Parameter(torch.empty(2, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(2, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, obs, action):
        x = torch.cat([obs, action], -1).unsqueeze(0).expand(2, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = F.relu(x)
        return x.squeeze(-1)


class PPOAdversary(nn.Module):
    """PPO actor-critic of the adversary: Gaussian over u (state-independent log std), tanh hidden units.
    Observation mode: s~ = s + eps tanh(u). Director mode (--pa): d = tanh(u) / |tanh(u)| in action space."""

    def __init__(self, obs_dim, out_dim, hidden_sizes):
        super().__init__()
        self.trunk = mlp([obs_dim, *hidden_sizes], nn.Tanh)
        self.trunk.append(nn.Tanh())
        self.value_net = mlp([obs_dim, *hidden_sizes, 1], nn.Tanh)
        self.mean = nn.Linear(hidden_sizes[-1], out_dim)
        self.log_std = nn.Parameter(torch.zeros(out_dim))

    def dist(self, obs):
        return torch.distributions.Normal(self.mean(self.trunk(obs)), self.log_std.exp())

    def value(self, obs):
        return self.value_net(obs).squeeze(-1)

    def policy_parameters(self) -> list:
        return [*self.trunk.parameters(), *self.mean.parameters(), self.log_std]


class RunningScale:
    """Scales rewards by the running std of the discounted return (PPO's usual reward normalization)."""

    def __init__(self, gamma: float):
        self.gamma, self.ret, self.count, self.mean, self.m2 = gamma, 0.0, 0, 0.0, 0.0

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

    def state_dict(self) -> dict:
        return {"ret": self.ret, "count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.ret, self.count, self.mean, self.m2 = state["ret"], state["count"], state["mean"], state["m2"]


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


# --- Method: SAC-PPO update -----------------------------------------------------------------------
def linear_ramp(step: int, start: int, end: int) -> float:
    """0 before `start`, 1 after `end`, linear in between."""
    if end <= start:
        return float(step >= end)
    return min(max((step - start) / (end - start), 0.0), 1.0)


class Learner:
    """Networks, optimizers and the gradient update of the method."""

    def __init__(self, args: Args, obs_dim, act_dim, action_low, action_high, device):
        self.args, self.device = args, device
        hidden = list(args.hidden_sizes)
        self.actor = Actor(obs_dim, act_dim, hidden, action_low, action_high).to(device)
        self.critic = TwinCritic(obs_dim, act_dim, hidden).to(device)
        self.critic_target = TwinCritic(obs_dim, act_dim, hidden).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        if args.compile:
            for net in (self.actor, self.critic, self.critic_target):
                net.compile()  # in place: parameter names, hence checkpoints, are unchanged
        self.log_alpha = torch.tensor(math.log(args.alpha), device=device, requires_grad=args.autotune)
        self.target_entropy = -float(act_dim) if args.target_entropy is None else args.target_entropy
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=args.q_lr, fused=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=args.alpha_lr, fused=True) if args.autotune else None
        self.eps = args.attack_eps
        self.adversary = PPOAdversary(obs_dim, act_dim if args.pa else obs_dim, list(args.adv_hidden_sizes)).to(device)
        self.adversary_optimizer = torch.optim.Adam(self.adversary.policy_parameters(), lr=args.adv_policy_lr, eps=1e-5,
                                                    fused=True)
        self.adversary_value_optimizer = torch.optim.Adam(self.adversary.value_net.parameters(), lr=args.adv_value_lr,
                                                          eps=1e-5, fused=True)

    def reg_eps(self, global_step: int) -> float:
        return self.eps * linear_ramp(global_step, self.args.reg_eps_start_step, self.args.reg_eps_end_step)

    def pa_perturb(self, obs: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """PA-AD: PGD ASCENDING cos(mu(s~) - mu(s), d) + |mu(s~) - mu(s)|, signed steps of eps/steps from a random
        start in the step box s + U(-eps/steps, eps/steps) (the references' PGD start, SPEC §7)."""
        steps = self.args.pa_steps
        with torch.no_grad():
            clean_action = self.actor.deterministic(obs)
        x = obs + (2 * torch.rand_like(obs) - 1) * (self.eps / steps)
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            change = self.actor.deterministic(x) - clean_action
            objective = F.cosine_similarity(change, direction, dim=-1, eps=1e-8) + change.norm(dim=-1)
            (grad,) = torch.autograd.grad(objective.sum(), x)
            x = torch.max(torch.min(x.detach() + self.eps / steps * grad.sign(), obs + self.eps), obs - self.eps)
        return x.detach()

    def realize(self, obs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The observation the agent is shown, from the adversary's pre-squash action u."""
        if self.args.pa:
            direction = torch.tanh(u)
            return self.pa_perturb(obs, direction / (direction.norm(dim=-1, keepdim=True) + 1e-8))
        return obs + self.eps * torch.tanh(u)

    def adversary_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """s~ ~ nu(.|s) of the current (fixed) PPO adversary."""
        with torch.no_grad():
            u = self.adversary.dist(obs).sample()
        return self.realize(obs, u)

    def sa_regularizer(self, obs: torch.Tensor, eps: float, clean=None) -> torch.Tensor:
        """max_{s~ in B_eps(s)} D(pi(.|s), pi(.|s~)) by SGLD, as SA-PPO's get_state_kl_bound_sgld
        (huanzhang12/SA_PPO, src/policy_gradients/steps.py): start s + step*sign(noise), step eps/steps, signed ascent
        of grad + sqrt(2*step*beta)/(i+2)*N(0,1) with beta = --reg-sgld-beta (reference 1e-5: the noise breaks ties,
        it does not flip the ascent), projected each step. The clean side pi(.|s) is a constant (detached, as in the
        reference): only pi(.|s~) at the detached maximiser carries gradient. `clean` = actor(s), if already computed.
        SPEC §6's beta applies to each state's own gradient; the reference differentiates the batch mean instead."""
        steps = self.args.reg_sgld_steps
        step = eps / steps
        reference = tuple(t.detach() for t in (self.actor(obs) if clean is None else clean))
        noise_scale = math.sqrt(2 * step * self.args.reg_sgld_beta)
        delta = step * torch.randn_like(obs).sign()
        for i in range(steps):
            delta.requires_grad_(True)
            distance = self.policy_distance(reference, obs + delta).sum()
            (grad,) = torch.autograd.grad(distance, delta)
            noise = noise_scale / (i + 2) * torch.randn_like(obs)
            delta = (delta.detach() + step * (grad + noise).sign()).clamp_(-eps, eps)
        return self.policy_distance(reference, (obs + delta).detach()).mean()

    def policy_distance(self, reference, obs_tilde: torch.Tensor) -> torch.Tensor:
        """Per-sample D(pi(.|s), pi(.|s~)); `reference` = actor(s) as (mean, log_std)."""
        mean, log_std = self.actor(obs_tilde)
        if self.args.reg_distance == "mse":
            return ((torch.tanh(mean) - torch.tanh(reference[0])) * self.actor.action_scale).pow(2).sum(-1)
        ref_mean, ref_log_std = reference  # KL(N_ref || N_tilde) of the pre-tanh diagonal Gaussians
        return (log_std - ref_log_std + ((2 * ref_log_std).exp() + (ref_mean - mean).pow(2)) /
                (2 * (2 * log_std).exp()) - 0.5).sum(-1)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def soft_value(self, critic, obs_critic, obs_actor):
        """V(s, s~) = min_j Q_j(s, a') - alpha log pi(a'|s~), a' ~ pi(.|s~): critic sees the true s."""
        action, log_prob = self.actor.sample(obs_actor)
        return critic(obs_critic, action).min(0).values - self.alpha * log_prob

    def critic_target_value(self, rewards, next_obs, terminated):
        """y = r + gamma (1-term) V'(s', s~'), s~' ~ nu(.|s') of the PPO adversary; `terminated` (not
        truncation) cuts the bootstrap."""
        next_obs_tilde = self.adversary_obs(next_obs)
        with torch.no_grad():
            next_value = self.soft_value(self.critic_target, next_obs, next_obs_tilde)
            return rewards + self.args.gamma * (1.0 - terminated) * next_value

    def update(self, obs, actions, rewards, next_obs, terminated, weights, global_step) -> dict:
        """One SAC step against the PPO adversary on a normalized batch. Returns scalar tensors for logging
        and per-sample TD errors."""
        target = self.critic_target_value(rewards, next_obs, terminated)
        q = self.critic(obs, actions)
        td = q - target
        critic_loss = (weights * F.huber_loss(q, target.expand_as(q), reduction="none", delta=self.args.huber_delta)).sum(0).mean()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        # Actor: the SAC loss alpha log pi(a|s~) - min_j Q_j(s, a), a ~ pi(.|s~), s~ ~ nu(.|s) (fixed adversary);
        # the critic sees the true s and gets no gradient.
        self.critic.requires_grad_(False)
        obs_tilde = self.adversary_obs(obs)
        action, log_prob = self.actor.sample(obs_tilde)
        actor_loss = (self.alpha * log_prob - self.critic(obs, action).min(0).values).mean()
        reg_eps = self.reg_eps(global_step)
        reg = torch.zeros((), device=obs.device)
        if self.args.reg_coef > 0 and reg_eps > 0:
            reg = self.sa_regularizer(obs, reg_eps)
            actor_loss = actor_loss + self.args.reg_coef * reg
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        self.critic.requires_grad_(True)

        if self.alpha_optimizer is not None:
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()

        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.args.tau)
        return {"td_errors": td.detach().abs().mean(0), "losses/critic_loss": critic_loss.detach(),
                "losses/actor_loss": actor_loss.detach(), "losses/q_mean": q.detach().mean(),
                "losses/alpha": self.alpha, "losses/entropy": -log_prob.detach().mean(),
                "adversary/reg": reg.detach(),
                "adversary/reg_eps": torch.tensor(reg_eps)}

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().cpu(),
                "actor_optimizer": self.actor_optimizer.state_dict(), "critic_optimizer": self.critic_optimizer.state_dict(),
                "alpha_optimizer": self.alpha_optimizer.state_dict() if self.alpha_optimizer else None,
                "adversary": self.adversary.state_dict(), "adversary_optimizer": self.adversary_optimizer.state_dict(),
                "adversary_value_optimizer": self.adversary_value_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.alpha_optimizer is not None and state["alpha_optimizer"] is not None:
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.adversary.load_state_dict(state["adversary"])
        self.adversary_optimizer.load_state_dict(state["adversary_optimizer"])
        self.adversary_value_optimizer.load_state_dict(state["adversary_value_optimizer"])


# --- Behaviour policy ------------------------------------------------------------------------------
def behaviour_action(learner: Learner, obs_n: torch.Tensor, episode_state: dict, rng: np.random.Generator,
                     global_step: int) -> np.ndarray:
    """A fraction adv_ratio of the data is collected on observations perturbed by the PPO adversary
    (SPEC §5); the buffer keeps true states."""
    args = learner.args
    if args.adv_ratio_per_step or "perturbed" not in episode_state:
        episode_state["perturbed"] = bool(rng.random() < args.adv_ratio)
    if episode_state["perturbed"]:
        obs_n = learner.adversary_obs(obs_n.unsqueeze(0))[0]
    with torch.no_grad():
        action, _ = learner.actor.sample(obs_n.unsqueeze(0))
    return action[0].cpu().numpy()


# --- Adversary training: PPO on its own rollouts against the current agent -------------------------
def adversary_iterations_due(step: int, total_steps: int, iterations: int) -> int:
    """PPO iterations to run after agent step `step` (1-based) so that steps 1..total_steps run exactly `iterations`."""
    return iterations * step // total_steps - iterations * (step - 1) // total_steps

class AdversaryTrainer:
    """Runs the PPO adversary's iterations in an environment of its own (these steps are the extra sample
    cost of alternating training). The agent acts with its behaviour (sampled) policy on s~; the adversary
    observes the agent's normalized true state (normalizer read-only here) and is rewarded with -r."""

    def __init__(self, args: Args, env: gym.Env, seed: int):
        self.args, self.env = args, env
        self.scale = RunningScale(args.gamma)
        self.raw_obs, _ = env.reset(seed=seed)
        self.env_steps, self.episode_return, self.returns = 0, 0.0, deque(maxlen=10)

    def iteration(self, learner: Learner, normalizer: RunningNormalizer) -> dict:
        args, adversary, device = self.args, learner.adversary, learner.device
        n = args.adv_ppo_steps
        obs_b, u_b, next_b = [], [], []
        rewards, terminated_b, end_b = np.zeros(n), np.zeros(n), np.zeros(n)
        for t in range(n):
            obs_n = normalizer.normalize(torch.as_tensor(self.raw_obs, dtype=torch.float32, device=device))
            with torch.no_grad():
                u = adversary.dist(obs_n).sample()
            obs_tilde = learner.realize(obs_n.unsqueeze(0), u.unsqueeze(0))  # (PA-AD's PGD needs autograd)
            with torch.no_grad():
                action = learner.actor.sample(obs_tilde)[0][0].cpu().numpy()
            self.raw_obs, reward, terminated, truncated, _ = self.env.step(action)
            next_b.append(normalizer.normalize(torch.as_tensor(self.raw_obs, dtype=torch.float32, device=device)))
            obs_b.append(obs_n), u_b.append(u)
            rewards[t] = self.scale(-float(reward), terminated or truncated)
            terminated_b[t], end_b[t] = float(terminated), float(terminated or truncated)
            self.episode_return += float(reward)
            if terminated or truncated:
                self.returns.append(self.episode_return)
                self.episode_return = 0.0
                self.raw_obs, _ = self.env.reset()
        self.env_steps += n
        obs_t, u_t = torch.stack(obs_b), torch.stack(u_b)
        with torch.no_grad():  # behaviour log-probs and values of the whole rollout, one batch each (no per-step sync)
            logp_t = adversary.dist(obs_t).log_prob(u_t).sum(-1)
            values, next_values = (adversary.value(x).double().cpu().numpy() for x in (obs_t, torch.stack(next_b)))
        advantages, returns = gae(rewards, values, next_values, terminated_b, end_b, args.gamma, args.adv_gae_lambda)
        adv_t = torch.as_tensor(advantages, dtype=torch.float32, device=device)
        ret_t = torch.as_tensor(returns, dtype=torch.float32, device=device)
        for _ in range(args.adv_epochs):
            for idx in torch.randperm(n, device=device).split(args.adv_minibatch):
                dist = adversary.dist(obs_t[idx])
                ratio = (dist.log_prob(u_t[idx]).sum(-1) - logp_t[idx]).exp()
                a = adv_t[idx]
                a = (a - a.mean()) / (a.std() + 1e-8) if len(idx) > 1 else a
                policy_loss = -torch.min(ratio * a, ratio.clamp(1 - args.adv_clip, 1 + args.adv_clip) * a).mean()
                value_loss = F.mse_loss(adversary.value(obs_t[idx]), ret_t[idx])
                entropy = dist.entropy().sum(-1).mean()
                # Policy and value nets share no parameter, so one backward serves both optimizers.
                loss = policy_loss + args.adv_vf_coef * value_loss - args.adv_ent_coef * entropy
                learner.adversary_optimizer.zero_grad(set_to_none=True)
                learner.adversary_value_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(adversary.policy_parameters(), args.adv_max_grad_norm)
                nn.utils.clip_grad_norm_(adversary.value_net.parameters(), args.adv_max_grad_norm)
                learner.adversary_optimizer.step()
                learner.adversary_value_optimizer.step()
        return {"adversary/policy_loss": policy_loss.detach(), "adversary/value_loss": value_loss.detach(),
                "adversary/agent_return": torch.tensor(np.mean(self.returns) if self.returns else float("nan"))}

    def state_dict(self) -> dict:
        return {"scale": self.scale.state_dict(), "raw_obs": torch.as_tensor(self.raw_obs),
                "env_state": get_env_state(self.env), "env_steps": self.env_steps,
                "episode_return": self.episode_return, "returns": list(self.returns)}

    def load_state_dict(self, state: dict) -> None:
        self.scale.load_state_dict(state["scale"])
        self.env_steps, self.episode_return = state["env_steps"], state["episode_return"]
        self.returns = deque(state["returns"], maxlen=10)
        if state["env_state"] is not None:
            set_env_state(self.env, state["env_state"])
            self.raw_obs = state["raw_obs"].numpy()
        else:
            self.raw_obs, _ = self.env.reset()


# --- Evaluation ------------------------------------------------------------------------------------
def evaluate(actor: Actor, normalizer: RunningNormalizer, env: gym.Env, episodes: int, seed: int) -> list[float]:
    """Clean returns of the deterministic policy; the normalizer is frozen (read only)."""
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                obs_n = normalizer.normalize(torch.as_tensor(obs, dtype=torch.float32, device=normalizer.device))
                action = actor.deterministic(obs_n.unsqueeze(0))[0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


# --- Checkpoint (the contract every attack reads; see README "Checkpoint contract") ----------------
def atomic_save(obj, path: str) -> None:
    """Temp file + rename: a reader never sees a half-written file, and a failed write (disk full, permission)
    leaves the previous file as it was and is one clear error."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports some write failures as RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise UserError(f"cannot write {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                        "the previous file there is intact")


def nonfinite_tensors(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors of a nested state dict that hold NaN or inf."""
    bad = []
    for key, value in state.items():
        if isinstance(value, dict):
            bad += nonfinite_tensors(value, f"{prefix}{key}.")
        elif torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(f"{prefix}{key}")
    return bad


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip or unpickler-policy errors all mean "not a checkpoint"
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    if not isinstance(ckpt, dict) or "checkpoint_format" not in ckpt or "actor" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project (no checkpoint_format / actor entries)")
    return ckpt


def build_checkpoint(args, learner, normalizer, env, obs_dim, act_dim, env_kwargs, eps, global_step, train_state,
                     summary) -> dict:
    return {
        "checkpoint_format": CHECKPOINT_FORMAT, "method": METHOD, "env_id": args.env_id, "env_kwargs": env_kwargs,
        "obs_dim": obs_dim, "act_dim": act_dim,
        "action_low": torch.as_tensor(env.action_space.low, dtype=torch.float32),
        "action_high": torch.as_tensor(env.action_space.high, dtype=torch.float32),
        "arch": {"hidden_sizes": list(args.hidden_sizes), "activation": "relu", "actor": "tanh_gaussian",
                 "log_std_min": LOG_STD_MIN, "log_std_max": LOG_STD_MAX, "critic": "twin_stacked",
                 "adversary": "ppo_director_action" if args.pa else "ppo_gaussian_obs",
                 "adversary_hidden_sizes": list(args.adv_hidden_sizes), "adversary_activation": "tanh"},
        "eps": eps, "global_step": global_step, "args": dataclasses.asdict(args), "normalizer": normalizer.state_dict(),
        **learner.state_dict(), "train_state": train_state, "summary": summary,
    }


# --- Training loop ---------------------------------------------------------------------------------
def resolve_args(args: Args) -> Args:
    task = task_name(args.env_id)
    if args.total_timesteps is None:
        args.total_timesteps = TOTAL_TIMESTEPS.get(task, 1_000_000)
    if args.attack_eps is None:
        args.attack_eps = ATTACK_EPS.get(task)
    if args.attack_eps is not None and args.attack_eps <= 0:
        raise UserError(f"--attack-eps must be > 0, got {args.attack_eps}")
    if args.attack_eps is None:
        raise UserError(f"no default attack radius for {args.env_id}: pass --attack-eps")
    per_task = {"adv_iterations": ADV_ITERATIONS, "adv_ratio": ADV_RATIO, "reg_coef": REG_COEF,
                "adv_policy_lr": ADV_POLICY_LR, "adv_value_lr": ADV_VALUE_LR, "adv_ent_coef": ADV_ENT_COEF}
    missing = ["--" + name.replace("_", "-") for name in per_task if getattr(args, name) is None]
    if task not in ADV_ITERATIONS and missing:
        raise UserError(f"no paper defaults for {args.env_id}: pass {', '.join(missing)}")
    for name, table in per_task.items():
        if getattr(args, name) is None:
            setattr(args, name, table[task])
    if not (args.adv_policy_lr > 0 and args.adv_value_lr > 0 and args.adv_ent_coef >= 0):
        raise UserError("--adv-policy-lr and --adv-value-lr must be > 0, --adv-ent-coef >= 0")
    if args.adv_iterations < 0 or args.adv_ppo_steps < 1 or args.pa_steps < 1 or args.adv_minibatch < 1:
        raise UserError("--adv-iterations must be >= 0; --adv-ppo-steps, --pa-steps, --adv-minibatch >= 1")
    ramp = REG_EPS_RAMP.get(task, (0, 0))
    args.reg_eps_start_step = ramp[0] if args.reg_eps_start_step is None else args.reg_eps_start_step
    args.reg_eps_end_step = ramp[1] if args.reg_eps_end_step is None else args.reg_eps_end_step
    if args.reg_sgld_steps < 1:
        raise UserError("--reg-sgld-steps must be >= 1")
    if not args.reg_sgld_beta >= 0:
        raise UserError(f"--reg-sgld-beta must be >= 0, got {args.reg_sgld_beta}")
    if not 0.0 <= args.adv_ratio <= 1.0:
        raise UserError("--adv-ratio must lie in [0, 1]")
    if args.reg_distance not in ("mse", "kl"):
        raise UserError(f"--reg-distance must be mse or kl, got {args.reg_distance!r}")
    if args.total_timesteps <= 0 or args.batch_size <= 0 or args.buffer_size <= 0:
        raise UserError("--total-timesteps, --batch-size and --buffer-size must be positive")
    if args.run_name is None:
        args.run_name = f"{args.env_id}__{METHOD}__{args.seed}__{int(time.time())}"
    if args.save_path is None:
        args.save_path = os.path.join("runs", args.run_name, "model.pt")
    return args


def train(args: Args) -> dict:
    """Runs the whole experiment; returns a summary (final evaluation, checkpoint path)."""
    args = resolve_args(args)
    resume_ckpt = load_checkpoint(args.resume) if args.resume else None
    if resume_ckpt is not None:
        if resume_ckpt.get("slim"):
            raise UserError(f"--resume: {args.resume} is a slim checkpoint (networks only, for attacks): resume from "
                            "the run's full model.pt")
        if resume_ckpt["method"] != METHOD or resume_ckpt["env_id"] != args.env_id:
            raise UserError(f"--resume: checkpoint is {resume_ckpt['method']} on {resume_ckpt['env_id']}, "
                            f"this run is {METHOD} on {args.env_id}")
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)  # exploration actions, episode-level coins (replay has its own)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    env_kwargs = parse_env_kwargs(args.env_id, args.env_kwargs)
    env = make_env(args.env_id, env_kwargs)
    eval_env = make_env(args.env_id, env_kwargs)
    env.action_space.seed(args.seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    eps = args.attack_eps

    learner = Learner(args, obs_dim, act_dim, low, high, device)
    adversary_trainer = AdversaryTrainer(args, make_env(args.env_id, env_kwargs), args.seed + 1)
    normalizer = RunningNormalizer(obs_dim, args.obs_clip, device)
    buffer = PrioritizedReplayBuffer(args.buffer_size, obs_dim, act_dim, device, prioritized=args.per,
                                     alpha=args.per_alpha, eps=args.per_eps, seed=args.seed)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join("runs", args.run_name))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    global_step, episode_return, episode_length = 0, 0.0, 0
    episode_state: dict = {}
    obs, _ = env.reset(seed=args.seed)
    normalizer.update(obs)  # the normalizer sees every observation the agent acts on, reset ones included
    if resume_ckpt is not None:
        try:
            learner.load_state_dict(resume_ckpt)
        except (RuntimeError, KeyError, ValueError) as e:  # e.g. other --hidden-sizes than the saved run
            raise UserError(f"--resume: {args.resume} does not fit this run's networks/options "
                            f"({str(e).splitlines()[0][:160]})")
        normalizer.load_state_dict(resume_ckpt["normalizer"])
        ts = resume_ckpt["train_state"]
        global_step, episode_return, episode_length = resume_ckpt["global_step"], ts["episode_return"], ts["episode_length"]
        episode_state = ts["episode_state"]
        adversary_trainer.load_state_dict(ts["adversary_trainer"])
        random.setstate(ts["python_rng"])
        np.random.set_state(tuple(ts["numpy_global_rng"]))  # stored as a list of plain values
        rng.bit_generator.state = ts["numpy_rng"]
        torch.set_rng_state(ts["torch_rng"])
        if device.type == "cuda" and ts.get("cuda_rng"):  # one state per GPU seen at save time: only ours matters,
            states, index = ts["cuda_rng"], torch.cuda.current_device()  # and the GPU count may have changed
            torch.cuda.set_rng_state(states[index if index < len(states) else 0])
        buffer_path = os.path.join(os.path.dirname(args.resume), ts["buffer_file"]) if ts["buffer_file"] else None
        buffer_state = None
        if buffer_path and os.path.isfile(buffer_path):
            try:
                buffer_state = torch.load(buffer_path, map_location="cpu", weights_only=True)
            except Exception as e:  # truncated or not a buffer file
                raise UserError(f"--resume: {buffer_path} is not a readable replay buffer ({type(e).__name__}); "
                                "delete it to resume with an empty buffer")
        if buffer_state is not None and buffer_state.get("global_step") == global_step:
            try:
                buffer.load_state_dict(buffer_state)
            except (RuntimeError, KeyError, ValueError) as e:
                raise UserError(f"--resume: {buffer_path} does not match this run's buffer "
                                f"({str(e).splitlines()[0][:160]})")
        else:
            print(f"[resume] no replay buffer of step {global_step} next to {args.resume} (train with --save-buffer "
                  "for an exact resume): refilling from empty", flush=True)
        if ts["env_state"] is not None:
            set_env_state(env, ts["env_state"])
            obs = ts["obs"].numpy()
        else:
            print("[resume] environment state not restorable: starting a new episode", flush=True)
        print(f"[resume] continuing {args.resume} at step {global_step}", flush=True)

    last_saved = {"path": args.resume, "step": global_step if args.resume else None}

    def save(step: int) -> None:
        """Never replaces a checkpoint by one holding non-finite values (checked before anything is written)."""
        bad = [k for k, flag in health.items() if bool(flag)] + nonfinite_tensors(learner.state_dict())
        if bad:
            diverged(bad, step, "before saving")
        stem = os.path.splitext(args.save_path)[0]
        paths = [args.save_path] + ([f"{stem}_step{step}.pt"] if args.keep_checkpoints else [])
        np_state = np.random.get_state()
        for path in paths:
            buffer_file = None
            if args.save_buffer:
                buffer_file = os.path.basename(os.path.splitext(path)[0]) + "_buffer.pt"  # next to the checkpoint
                atomic_save({**buffer.state_dict(), "global_step": step}, os.path.join(os.path.dirname(path), buffer_file))
            train_state = {
                "episode_return": episode_return, "episode_length": episode_length, "episode_state": episode_state,
                "obs": torch.as_tensor(obs), "env_state": get_env_state(env),
                "python_rng": random.getstate(), "numpy_rng": rng.bit_generator.state,
                "numpy_global_rng": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
                "torch_rng": torch.get_rng_state(), "buffer_file": buffer_file,
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],  # --cuda: exact resume too
                "adversary_trainer": adversary_trainer.state_dict(),
            }
            atomic_save(build_checkpoint(args, learner, normalizer, env, obs_dim, act_dim, env_kwargs, eps, step,
                                         train_state, summary), path)
        last_saved.update(path=args.save_path, step=step)

    def diverged(names: list[str], step: int, when: str) -> None:
        good = (f"{last_saved['path']} (step {last_saved['step']})" if last_saved["path"]
                else f"none written by this run ({args.save_path} untouched)")
        raise Diverged(f"non-finite {', '.join(names[:4])} at or before step {step} ({when}); stopped without saving; "
                       f"last good checkpoint: {good}")

    # Divergence guard without a host sync per update: each guarded loss leaves a device-side flag, read once per
    # --log-every steps, so at most that many updates run between a non-finite loss and the stop (and save()
    # checks the flags and every parameter before writing).
    health: dict = {}
    stop = {"signal": None}

    def on_signal(signum, frame) -> None:
        if stop["signal"] is not None:  # a second signal: exit at once
            print(f"[{METHOD}] second {signal.Signals(signum).name}: exiting now, without saving", flush=True)
            os._exit(128 + signum)
        stop["signal"] = signum
        print(f"[{METHOD}] {signal.Signals(signum).name}: finishing this step, then saving (again to exit at once)",
              flush=True)

    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    recent_returns: deque[float] = deque(maxlen=10)
    last_eval: list[float] = []
    start_time, start_step = time.time(), global_step
    # Last clean evaluation and throughput, stored in every checkpoint (read by benchmarks/).
    summary: dict = {"eval_returns": [], "eval_mean": float("nan"), "eval_std": float("nan"), "sps": 0.0}

    update_clock = {"step": 0, "seconds": 0.0}  # steps/s of the updating phase, evaluations excluded

    def record_eval(returns: list[float]) -> None:
        writer.add_scalar("eval/return", np.mean(returns), global_step)
        summary.update(eval_returns=[float(r) for r in returns], eval_mean=float(np.mean(returns)),
                       eval_std=float(np.std(returns)), eval_step=global_step,
                       sps=(global_step - start_step) / max(time.time() - start_time, 1e-9),
                       sps_updating=update_clock["step"] / max(update_clock["seconds"], 1e-9))
    logs: dict = {}
    try:
        while global_step < args.total_timesteps:
            if global_step >= args.learning_starts:
                tick = time.perf_counter()
            obs_n = normalizer.normalize(torch.as_tensor(obs, dtype=torch.float32, device=device))
            if global_step < args.learning_starts:
                action = rng.uniform(low, high).astype(np.float32)
            else:
                action = behaviour_action(learner, obs_n, episode_state, rng, global_step)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            # The buffer stores the TRUE next state; a time-limit truncation keeps bootstrapping.
            buffer.add(obs, action, reward, next_obs, terminated)
            normalizer.update(next_obs)
            global_step += 1
            episode_return += float(reward)
            episode_length += 1
            obs = next_obs
            if terminated or truncated:
                recent_returns.append(episode_return)
                writer.add_scalar("charts/episodic_return", episode_return, global_step)
                writer.add_scalar("charts/episodic_length", episode_length, global_step)
                obs, _ = env.reset()
                normalizer.update(obs)
                episode_return, episode_length, episode_state = 0.0, 0, {}

            if global_step > args.learning_starts and buffer.size >= args.batch_size:
                beta = args.per_beta_start + (1.0 - args.per_beta_start) * min(1.0, global_step / args.total_timesteps)
                idx, b_obs, b_act, b_rew, b_next, b_term, b_w = buffer.sample(args.batch_size, beta)
                logs = learner.update(normalizer.normalize(b_obs), b_act, b_rew, normalizer.normalize(b_next),
                                      b_term, b_w, global_step)
                buffer.update_priorities(idx, logs["td_errors"])  # stays on the device
                for key, value in logs.items():
                    if key.startswith(("losses/", "adversary/loss")):
                        flag = ~torch.isfinite(value)
                        health[key] = flag if key not in health else health[key] | flag
            # Exactly --adv-iterations over the run, spread evenly: iteration k runs at step ceil(k T / N). A function of
            # the step alone, so a resumed run keeps the schedule (with N > T several run in one step).
            for _ in range(adversary_iterations_due(global_step, args.total_timesteps, args.adv_iterations)):
                adversary_logs = adversary_trainer.iteration(learner, normalizer)
                for key in ("adversary/policy_loss", "adversary/value_loss"):
                    flag = ~torch.isfinite(adversary_logs[key])
                    health[key] = flag if key not in health else health[key] | flag
                for key, value in adversary_logs.items():
                    writer.add_scalar(key, float(value), global_step)
                writer.add_scalar("charts/adversary_env_steps", adversary_trainer.env_steps, global_step)
                writer.add_scalar("charts/total_env_steps", global_step + adversary_trainer.env_steps, global_step)

            if global_step > args.learning_starts:
                update_clock["step"] += 1
                update_clock["seconds"] += time.perf_counter() - tick

            if global_step % args.log_every == 0 or global_step == args.total_timesteps:
                bad = [k for k, flag in health.items() if bool(flag)]  # the one host sync of the guard
                if bad:
                    diverged(bad, global_step, f"read every --log-every {args.log_every} steps")
                sps = (global_step - start_step) / max(time.time() - start_time, 1e-9)
                writer.add_scalar("charts/SPS", sps, global_step)
                for key, value in logs.items():
                    if key.startswith(("losses/", "adversary/")):
                        writer.add_scalar(key, float(value), global_step)
                ret = f"{np.mean(recent_returns):9.1f}" if recent_returns else "      n/a"
                eta = (args.total_timesteps - global_step) / max(sps, 1e-9)
                print(f"[{METHOD}] step {global_step:>9d}/{args.total_timesteps} | sps {sps:6.1f} | return(10) {ret} | "
                      f"alpha {float(learner.alpha):.3f} | adversary steps {adversary_trainer.env_steps} | "
                      f"eta {eta / 60:6.1f} min", flush=True)
            if args.eval_every and global_step % args.eval_every == 0 and global_step < args.total_timesteps:
                last_eval = evaluate(learner.actor, normalizer, eval_env, args.eval_episodes, args.seed + 10_000)
                record_eval(last_eval)
                print(f"[{METHOD}] eval at {global_step}: {np.mean(last_eval):.1f} +- {np.std(last_eval):.1f}", flush=True)
            if args.save_every and global_step % args.save_every == 0:
                save(global_step)
            if stop["signal"] is not None:
                if not (args.save_every and global_step % args.save_every == 0):  # (not saved a moment ago)
                    save(global_step)
                raise Preempted(f"saved {args.save_path} at step {global_step}"
                                f"{'' if args.save_buffer else ' (no buffer: --save-buffer for an exact resume)'}; continue "
                                f"with the same options plus --resume {args.save_path}", stop["signal"])

        last_eval = evaluate(learner.actor, normalizer, eval_env, args.eval_episodes, args.seed + 10_000)
        record_eval(last_eval)
        print(f"[{METHOD}] final eval at {global_step}: {np.mean(last_eval):.1f} +- {np.std(last_eval):.1f}", flush=True)
        save(global_step)
        writer.close()
        env.close()
        eval_env.close()
    finally:
        writer.close()  # also when preempted or diverged: the events since the last flush are kept
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    print(f"[{METHOD}] checkpoint: {args.save_path}", flush=True)
    print(f"[{METHOD}] environment steps: agent {global_step} + adversary {adversary_trainer.env_steps} = "
          f"{global_step + adversary_trainer.env_steps}", flush=True)
    return {"eval_returns": last_eval, "save_path": args.save_path, "global_step": global_step, "learner": learner,
            "normalizer": normalizer, "buffer": buffer, "adversary_env_steps": adversary_trainer.env_steps}


def main(argv: Optional[list[str]] = None) -> None:
    args = tyro.cli(Args, args=argv)
    try:
        train(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except Preempted as e:
        print(f"[{METHOD}] stopped: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    main()
