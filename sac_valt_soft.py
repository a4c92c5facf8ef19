"""VALT-SOFT-SAC: Virtual ALternative Training with the KL soft-worst adversary (SPEC §3), one file.

SAC (sac.py) trained against a parametric adversary nu_phi(s~|s) = s + eps tanh(u), u Gaussian, that is
fitted to the Boltzmann soft-worst distribution p(s~|s) exp(-V_pi(s, s~)/kappa)/Z by minimising
E[V_pi(s, s~) + kappa log nu_phi(s~|s)] through the agent's own critic (the adversary's value is -Q:
no adversary critic, no extra environment steps). Policy evaluation bootstraps the soft-min value,
policy improvement runs on adversary samples.

    python sac_valt_soft.py --env-id HalfCheetah-v4
    python sac_valt_soft.py --env-id Ant-v4 --kappa 4 --kappa-start 1000
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

METHOD = "valt_soft"
CHECKPOINT_FORMAT = 1

# --- Configuration ---------------------------------------------------------------------------------
# Per-task defaults, keyed by the env id's prefix ("Hopper-v4" -> "Hopper").
ATTACK_EPS = {"Hopper": 0.075, "Walker2d": 0.05, "HalfCheetah": 0.15, "Ant": 0.15}  # SPEC §1
TOTAL_TIMESTEPS = {"Hopper": 500_000, "Walker2d": 1_500_000, "HalfCheetah": 1_000_000, "Ant": 3_000_000}
# The literature's Ant has 111 observation dims (contact forces included), SPEC §9.
DEFAULT_ENV_KWARGS = {"Ant-v4": {"use_contact_forces": True}}
# VALT-SOFT, paper Table 6: KL weight kappa, behaviour adversary ratio, adversary reset period, "+reg."
# coefficient and the linear ramp of the regulariser's radius (start, end step).
KAPPA = {"Hopper": 2.0, "Walker2d": 4.0, "HalfCheetah": 8.0, "Ant": 4.0}
ADV_RATIO = {"Hopper": 0.5, "Walker2d": 0.5, "HalfCheetah": 1.0, "Ant": 0.5}
ADV_RESET_EVERY = {"Hopper": 2000, "Walker2d": 2000, "HalfCheetah": 2000, "Ant": 1000}
REG_COEF = {"Hopper": 3.0, "Walker2d": 0.0, "HalfCheetah": 1.0, "Ant": 30.0}
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
    # --- VALT-SOFT ---
    kappa: Optional[float] = None  # weight of KL(nu || uniform prior) in the soft-worst objective; default per task (Table 6)
    kappa_start: Optional[float] = None
    """if set, kappa anneals linearly from this value to --kappa over --kappa-anneal-steps (paper, Ant: 1000 -> 4)"""
    kappa_anneal_steps: Optional[int] = None  # default: the whole run
    adv_lr: float = 3e-4
    adv_reset_every: Optional[int] = None
    """re-initialise the adversary to its initial parameters every this many steps (0: never); default per task"""
    adv_updates_per_step: int = 1  # adversary gradient steps per agent update
    target_kl_term: bool = False
    """add the one-sample kappa (log nu - log p) of the soft-min value to the critic target. Off (SPEC §3): nu_phi cannot
    represent the uniform prior (>= 0.0095 nats/dim), so the term biases Q by >= kappa*d*0.0095/(1-gamma) and blows it
    up when kappa is large (Ant with --kappa-start 1000)"""
    pe_adversary: bool = True
    """policy evaluation under the adversary (the soft-worst critic target); --no-pe-adversary: SAC's clean target,
    the paper's "w/o PE" ablation (Appendix E.2); the adversary still learns from the critic"""
    pi_adversary: bool = True
    """policy improvement under the adversary; --no-pi-adversary: SAC's actor loss at the true s, the paper's
    "w/o PI" ablation (Appendix E.2)"""
    adv_ratio: Optional[float] = None  # fraction of data collected on adversary samples; default per task (Table 6)
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


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
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


ADVERSARY_INIT_STD = 0.87


class Adversary(nn.Module):
    """nu_phi(s~|s): s~ = s + eps tanh(u), u ~ N(mean(s), std(s)) over the observation dims; the actor's
    MLP shape with an observation-sized output (paper Appendix D)."""

    def __init__(self, obs_dim, hidden_sizes, eps):
        super().__init__()
        self.trunk = mlp([obs_dim, *hidden_sizes])
        self.trunk.append(nn.ReLU())
        self.mean = nn.Linear(hidden_sizes[-1], obs_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], obs_dim)
        self.eps = eps
        # Start at the prior: u ~ N(0, 0.87^2) makes tanh(u) nearly uniform on [-1, 1] (KL ~0.012 nats per
        # dimension, the minimum over the std), so a fresh or reset adversary does not make the KL term of
        # the critic target jump (with the default head init it starts ~0.8 nats per dimension away).
        with torch.no_grad():
            self.mean.weight.zero_()
            self.mean.bias.zero_()
            self.log_std.weight.zero_()
            unit = (math.log(ADVERSARY_INIT_STD) - LOG_STD_MIN) / (0.5 * (LOG_STD_MAX - LOG_STD_MIN)) - 1
            self.log_std.bias.fill_(math.atanh(unit))

    def forward(self, obs):
        h = self.trunk(obs)
        log_std = torch.tanh(self.log_std(h))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return self.mean(h), log_std

    def sample(self, obs):
        """Reparameterized s~ and log nu(s~|s), Jacobian of u -> s + eps tanh(u) included."""
        mean, log_std = self(obs)
        noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        log_jacobian = 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh)) + math.log(self.eps)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi) - log_jacobian).sum(-1)
        return obs + self.eps * torch.tanh(pre_tanh), log_prob

    def deterministic(self, obs):
        mean, _ = self(obs)
        return obs + self.eps * torch.tanh(mean)


# --- Method: VALT-SOFT update ----------------------------------------------------------------------
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
        self.adversary = Adversary(obs_dim, hidden, self.eps).to(device)
        self.adversary_init = {k: v.clone() for k, v in self.adversary.state_dict().items()}
        self.adversary_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=args.adv_lr, fused=True)
        # log p(s~|s) of the uniform prior on the eps-ball
        self.log_prior = -obs_dim * math.log(2 * self.eps)

    def kappa(self, global_step: int) -> float:
        if self.args.kappa_start is None:
            return self.args.kappa
        frac = linear_ramp(global_step, 0, self.args.kappa_anneal_steps)
        return self.args.kappa_start + frac * (self.args.kappa - self.args.kappa_start)

    def reg_eps(self, global_step: int) -> float:
        return self.eps * linear_ramp(global_step, self.args.reg_eps_start_step, self.args.reg_eps_end_step)

    def reset_adversary(self) -> None:
        """Back to the initial parameters with a fresh optimizer: the paper's periodic re-learning, which keeps
        the adversary from settling in a local minimum of the agent's value."""
        self.adversary.load_state_dict(self.adversary_init)
        self.adversary_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=self.args.adv_lr, fused=True)

    def adversary_loss(self, obs: torch.Tensor, kappa: float) -> torch.Tensor:
        """KL(nu_phi || nu*) up to a constant: E[V_pi(s, s~) + kappa log nu_phi(s~|s)], s~ ~ nu_phi(.|s), with the
        gradient flowing through s~ -> pi -> a -> Q (agent networks are frozen by the caller)."""
        obs_tilde, log_nu = self.adversary.sample(obs)
        return (self.soft_value(self.critic, obs, obs_tilde) + kappa * log_nu).mean()

    def update_adversary(self, obs: torch.Tensor, kappa: float) -> torch.Tensor:
        self.actor.requires_grad_(False)
        self.critic.requires_grad_(False)
        loss = self.adversary_loss(obs, kappa)
        self.adversary_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.adversary_optimizer.step()
        self.actor.requires_grad_(True)
        self.critic.requires_grad_(True)
        return loss.detach()

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

    def critic_target_value(self, rewards, next_obs, terminated, kappa: float):
        """y = r + gamma (1-term) [V'(s', s~') + kappa (log nu(s~'|s') - log p(s~'|s'))], s~' ~ nu_phi(.|s'): a
        one-sample estimate of the soft-min value; `terminated` (not truncation) cuts the bootstrap."""
        with torch.no_grad():
            next_obs_tilde, log_nu = self.adversary.sample(next_obs)
            if not self.args.pe_adversary:  # "w/o PE": the clean SAC target (the KL above is still logged)
                next_obs_tilde = next_obs
            next_value = self.soft_value(self.critic_target, next_obs, next_obs_tilde)
            self.kl_to_prior = (log_nu - self.log_prior).mean()  # one-sample KL(nu || p), logged
            if self.args.target_kl_term:
                next_value = next_value + kappa * (log_nu - self.log_prior)
            return rewards + self.args.gamma * (1.0 - terminated) * next_value

    def update(self, obs, actions, rewards, next_obs, terminated, weights, global_step) -> dict:
        """One VALT-SOFT step on a normalized batch. Returns scalar tensors for logging and per-sample TD errors."""
        if self.args.adv_reset_every and global_step % self.args.adv_reset_every == 0:
            self.reset_adversary()
        kappa = self.kappa(global_step)
        target = self.critic_target_value(rewards, next_obs, terminated, kappa)
        q = self.critic(obs, actions)
        td = q - target
        critic_loss = (weights * F.huber_loss(q, target.expand_as(q), reduction="none", delta=self.args.huber_delta)).sum(0).mean()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        # Actor: the SAC loss alpha log pi(a|s~) - min_j Q_j(s, a), a ~ pi(.|s~), s~ ~ nu_phi(.|s) (fixed adversary);
        # the critic sees the true s and gets no gradient.
        self.critic.requires_grad_(False)
        obs_tilde = obs  # "w/o PI": the clean SAC actor loss
        if self.args.pi_adversary:
            with torch.no_grad():
                obs_tilde, _ = self.adversary.sample(obs)
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

        adversary_loss = torch.zeros((), device=obs.device)
        for _ in range(self.args.adv_updates_per_step):
            adversary_loss = self.update_adversary(obs, kappa)

        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.args.tau)
        return {"td_errors": td.detach().abs().mean(0), "losses/critic_loss": critic_loss.detach(),
                "losses/actor_loss": actor_loss.detach(), "losses/q_mean": q.detach().mean(),
                "losses/alpha": self.alpha, "losses/entropy": -log_prob.detach().mean(),
                "adversary/kappa": torch.tensor(kappa), "adversary/loss": adversary_loss, "adversary/reg": reg.detach(),
                "adversary/kl_to_prior": self.kl_to_prior,
                "adversary/reg_eps": torch.tensor(reg_eps)}

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().cpu(),
                "actor_optimizer": self.actor_optimizer.state_dict(), "critic_optimizer": self.critic_optimizer.state_dict(),
                "alpha_optimizer": self.alpha_optimizer.state_dict() if self.alpha_optimizer else None,
                "adversary": self.adversary.state_dict(), "adversary_init": self.adversary_init,
                "adversary_optimizer": self.adversary_optimizer.state_dict()}

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
        self.adversary_init = {k: v.clone() for k, v in state["adversary_init"].items()}
        self.adversary_optimizer.load_state_dict(state["adversary_optimizer"])


# --- Behaviour policy ------------------------------------------------------------------------------
def behaviour_action(learner: Learner, obs_n: torch.Tensor, episode_state: dict, rng: np.random.Generator,
                     global_step: int) -> np.ndarray:
    """A fraction adv_ratio of the data is collected on observations perturbed by the adversary nu_phi
    (SPEC §5); the buffer keeps true states."""
    args = learner.args
    if args.adv_ratio_per_step or "perturbed" not in episode_state:
        episode_state["perturbed"] = bool(rng.random() < args.adv_ratio)
    if episode_state["perturbed"]:
        with torch.no_grad():
            obs_n, _ = learner.adversary.sample(obs_n.unsqueeze(0))
            obs_n = obs_n[0]
    with torch.no_grad():
        action, _ = learner.actor.sample(obs_n.unsqueeze(0))
    return action[0].cpu().numpy()


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
                 "adversary": "tanh_gaussian_obs"},
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
    if task not in KAPPA and None in (args.kappa, args.adv_ratio, args.adv_reset_every, args.reg_coef):
        raise UserError(f"no paper defaults for {args.env_id}: pass --kappa, --adv-ratio, --adv-reset-every, --reg-coef")
    if args.kappa is None:
        args.kappa = KAPPA[task]
    if args.adv_ratio is None:
        args.adv_ratio = ADV_RATIO[task]
    if args.adv_reset_every is None:
        args.adv_reset_every = ADV_RESET_EVERY[task]
    if args.kappa_anneal_steps is None:
        args.kappa_anneal_steps = args.total_timesteps
    if args.kappa <= 0 or (args.kappa_start is not None and args.kappa_start <= 0):
        raise UserError("--kappa and --kappa-start must be > 0")
    if args.reg_coef is None:
        args.reg_coef = REG_COEF[task]
    ramp = REG_EPS_RAMP.get(task, (0, 0))
    args.reg_eps_start_step = ramp[0] if args.reg_eps_start_step is None else args.reg_eps_start_step
    args.reg_eps_end_step = ramp[1] if args.reg_eps_end_step is None else args.reg_eps_end_step
    if args.reg_sgld_steps < 1 or args.adv_updates_per_step < 0:
        raise UserError("--reg-sgld-steps must be >= 1 and --adv-updates-per-step >= 0")
    if args.target_kl_term and not args.pe_adversary:
        raise UserError("--target-kl-term is part of the adversarial policy evaluation: it needs --pe-adversary")
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
                      f"alpha {float(learner.alpha):.3f} | eta {eta / 60:6.1f} min", flush=True)
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
    return {"eval_returns": last_eval, "save_path": args.save_path, "global_step": global_step, "learner": learner,
            "normalizer": normalizer, "buffer": buffer}


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
