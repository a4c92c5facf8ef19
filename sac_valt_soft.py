"""VALT-SOFT-SAC: Virtual ALternative Training with the KL soft-worst adversary (SPEC §3), one file.

SAC (sac.py) trained against a parametric adversary nu_phi(s~|s) = s + eps tanh(u), u Gaussian, fitted to the
Boltzmann soft-worst distribution p(s~|s) exp(-V_pi(s, s~)/kappa)/Z by minimising
E[V_pi(s, s~) + kappa log nu_phi(s~|s)] through the agent's own critic (the adversary's value is -Q: no adversary
critic, no extra environment steps). Policy evaluation bootstraps the soft-min value, policy improvement runs on
adversary samples.

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
from dataclasses import dataclass, field
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

METHOD = "valt_soft"
# Per-task defaults (SPEC §1, §6), keyed by the env id's prefix ("Hopper-v4" -> "Hopper"): flag -> value. VALT-SOFT's,
# paper Table 6: the KL weight kappa, the behaviour adversary ratio, the adversary reset period, the "+reg." coefficient
# and the linear ramp of the regulariser's radius (start, end step).
TASK_DEFAULTS = {
    "Hopper": dict(total_timesteps=500_000, attack_eps=0.075, kappa=2.0, adv_ratio=0.5, adv_reset_every=2000,
                   reg_coef=3.0, reg_eps_start_step=100_000, reg_eps_end_step=400_000),
    "Walker2d": dict(total_timesteps=1_500_000, attack_eps=0.05, kappa=4.0, adv_ratio=0.5, adv_reset_every=2000,
                     reg_coef=0.0, reg_eps_start_step=100_000, reg_eps_end_step=1_300_000),
    "HalfCheetah": dict(total_timesteps=1_000_000, attack_eps=0.15, kappa=8.0, adv_ratio=1.0, adv_reset_every=2000,
                        reg_coef=1.0, reg_eps_start_step=100_000, reg_eps_end_step=800_000),
    "Ant": dict(total_timesteps=3_000_000, attack_eps=0.15, kappa=4.0, adv_ratio=0.5, adv_reset_every=1000,
                reg_coef=30.0, reg_eps_start_step=100_000, reg_eps_end_step=2_700_000),
}
DEFAULT_ENV_KWARGS = {"Ant-v4": {"use_contact_forces": True}}  # the literature's 111-dim Ant (SPEC §9)

@dataclass
class Args:
    env_id: str = "Hopper-v4"  # Gymnasium id (the MuJoCo -v4 tasks have the paper's settings)
    env_kwargs: str = ""  # extra gym.make kwargs as JSON, merged over the defaults
    seed: int = 1  # seed of python, numpy, torch and the environment
    total_timesteps: Optional[int] = None  # environment steps; default per task
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
    target_entropy: Optional[float] = None  # entropy target of the temperature; default -dim(A)
    huber_delta: float = 1.0  # Huber (smooth L1) threshold of the critic loss
    per: bool = True  # proportional prioritized replay (off: uniform replay, unit weights)
    per_alpha: float = 0.6
    per_beta_start: float = 0.4  # importance-sampling exponent, annealed linearly to 1.0 over training
    per_eps: float = 1e-6
    obs_clip: float = 10.0  # normalized observations are clipped to [-obs_clip, obs_clip]
    attack_eps: Optional[float] = None  # l_inf attack radius (normalized units) stored in the checkpoint; per task
    eval_every: int = 10_000  # steps between clean deterministic evaluations (0: only at the end)
    eval_episodes: int = 10
    capture_video: bool = False  # also write each evaluation's first episode to videos/{run_name}/eval_step{N}.mp4
    log_every: int = 1000  # steps between progress lines and scalar logs (the divergence guard reads its flags then)
    save_every: int = 50_000  # steps between checkpoints (the final one is always written)
    save_path: Optional[str] = None  # checkpoint file; default runs/{run_name}/model.pt
    save_buffer: bool = False  # also write the replay buffer next to each checkpoint (for an exact --resume)
    keep_checkpoints: bool = False  # also keep every periodic checkpoint as {save_path stem}_step{N}.pt
    resume: Optional[str] = None  # continue the run stored in this full checkpoint
    run_name: Optional[str] = None  # default {env_id}__{method}__{seed}__{unix time}
    cuda: bool = True  # use CUDA when available
    compile: bool = False  # torch.compile the actor and critics (GPUs; slower on CPU); same math up to rounding
    threads: Optional[int] = None  # torch intra-op threads (default: torch's choice)

    # --- VALT-SOFT ---
    kappa: Optional[float] = None  # weight of KL(nu || uniform prior) in the soft-worst objective; per task (Table 6)
    kappa_start: Optional[float] = None  # if set, kappa anneals linearly from it to --kappa (paper, Ant: 1000 -> 4)
    kappa_anneal_steps: Optional[int] = None  # steps of that annealing; default: the whole run
    adv_lr: float = 3e-4
    adv_reset_every: Optional[int] = None  # re-initialise the adversary every this many steps (0: never); per task
    adv_updates_per_step: int = 1  # adversary gradient steps per agent update
    target_kl_term: bool = False  # add the one-sample kappa (log nu - log p) to the critic target (biases Q: SPEC §3)
    pe_adversary: bool = True  # policy evaluation under the adversary; off: SAC's target ("w/o PE", Appendix E.2)
    pi_adversary: bool = True  # policy improvement under the adversary; off: SAC's actor loss ("w/o PI", Appendix E.2)
    adv_ratio: Optional[float] = None  # fraction of data collected on adversary samples; default per task (Table 6)
    adv_ratio_per_step: bool = False  # draw perturbed/clean per environment step instead of per episode
    reg_coef: Optional[float] = None  # SA regulariser ("+reg.") coefficient; default per task (Table 5); 0: off
    reg_sgld_steps: int = 2
    reg_sgld_beta: float = 1e-5  # SGLD inverse temperature of the regulariser's search (SA-PPO: 1e-5)
    reg_distance: str = "mse"  # "mse" of the deterministic actions (SA-DDPG) or "kl" of the Gaussians (SA-PPO)
    reg_eps_start_step: Optional[int] = None  # the regulariser's radius ramps 0 -> eps between these steps; per task
    reg_eps_end_step: Optional[int] = None


def resolve_args(args: Args) -> Args:
    for flag, value in TASK_DEFAULTS.get(task_name(args.env_id), {}).items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    needed = ("total_timesteps", "attack_eps", "kappa", "adv_ratio", "adv_reset_every", "reg_coef",
              "reg_eps_start_step", "reg_eps_end_step")
    missing = [f"--{flag.replace('_', '-')}" for flag in needed if getattr(args, flag) is None]
    if missing:
        raise UserError(f"{args.env_id} has no paper defaults: pass {', '.join(missing)}")
    args.kappa_anneal_steps = args.total_timesteps if args.kappa_anneal_steps is None else args.kappa_anneal_steps
    for bad, message in [
            (args.attack_eps <= 0, f"--attack-eps must be > 0, got {args.attack_eps}"),
            (args.kappa <= 0 or (args.kappa_start is not None and args.kappa_start <= 0),
             "--kappa and --kappa-start must be > 0"),
            (args.reg_sgld_steps < 1 or args.adv_updates_per_step < 0,
             "--reg-sgld-steps must be >= 1 and --adv-updates-per-step >= 0"),
            (args.target_kl_term and not args.pe_adversary,
             "--target-kl-term is part of the adversarial policy evaluation: it needs --pe-adversary"),
            (not args.reg_sgld_beta >= 0, f"--reg-sgld-beta must be >= 0, got {args.reg_sgld_beta}"),
            (not 0.0 <= args.adv_ratio <= 1.0, "--adv-ratio must lie in [0, 1]"),
            (args.reg_distance not in ("mse", "kl"), f"--reg-distance must be mse or kl, got {args.reg_distance!r}"),
            (min(args.total_timesteps, args.batch_size, args.buffer_size) <= 0,
             "--total-timesteps, --batch-size and --buffer-size must be positive")]:
        if bad:
            raise UserError(message)
    args.run_name = args.run_name or f"{args.env_id}__{METHOD}__{args.seed}__{int(time.time())}"
    args.save_path = args.save_path or os.path.join("runs", args.run_name, "model.pt")
    return args


# --- Environment -----------------------------------------------------------------------------------
def task_name(env_id: str) -> str:
    return env_id.split("-")[0]


def parse_env_kwargs(env_id: str, env_kwargs: str) -> dict:
    kwargs = dict(DEFAULT_ENV_KWARGS.get(env_id, {}))
    try:
        extra = json.loads(env_kwargs) if env_kwargs else {}
    except json.JSONDecodeError as e:
        raise UserError(f"--env-kwargs is not valid JSON ({e}): {env_kwargs!r}")
    if not isinstance(extra, dict):
        raise UserError(f"--env-kwargs must be a JSON object, got {env_kwargs!r}")
    return {**kwargs, **extra}


def make_env(env_id: str, env_kwargs: dict) -> gym.Env:
    if env_id not in gym.registry:
        raise UserError(f"unknown environment id {env_id!r} (e.g. Hopper-v4, HalfCheetah-v4, Walker2d-v4, Ant-v4)")
    try:
        with warnings.catch_warnings():  # the -v4 tasks are the literature's (SPEC §9): "upgrade to v5" is noise
            warnings.filterwarnings("ignore", message=".*is out of date.*")
            env = gym.make(env_id, **env_kwargs)
    except TypeError as e:
        raise UserError(f"cannot make {env_id} with kwargs {env_kwargs}: {e}")
    if not isinstance(env.action_space, gym.spaces.Box):
        raise UserError(f"{env_id} has a {type(env.action_space).__name__} action space; this method needs a continuous Box")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise UserError(f"{env_id} needs a flat Box observation space, got {env.observation_space}")
    return env


def get_env_state(env: gym.Env) -> Optional[dict]:
    """Full simulator state of a MuJoCo env (an exact resume mid-episode), else None."""
    unwrapped = env.unwrapped
    if not (hasattr(unwrapped, "model") and hasattr(unwrapped, "data")):
        return None
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    physics = np.empty(mujoco.mj_stateSize(unwrapped.model, spec))
    mujoco.mj_getState(unwrapped.model, unwrapped.data, physics, spec)
    return {"physics": torch.from_numpy(physics), "elapsed_steps": env.get_wrapper_attr("_elapsed_steps"),
            "np_random": unwrapped.np_random.bit_generator.state}


def set_env_state(env: gym.Env, state: dict) -> None:
    import mujoco

    unwrapped = env.unwrapped
    mujoco.mj_setState(unwrapped.model, unwrapped.data, state["physics"].numpy(), mujoco.mjtState.mjSTATE_INTEGRATION)
    env.set_wrapper_attr("_elapsed_steps", state["elapsed_steps"])
    unwrapped.np_random.bit_generator.state = state["np_random"]


# --- Observation normalizer ------------------------------------------------------------------------
class RunningNormalizer:
    """Running mean/variance of raw observations (parallel Welford update in float64). Attack radii live in this
    normalized space (SPEC §1)."""

    def __init__(self, dim: int, clip: float, device: torch.device):
        self.mean, self.var, self.count, self.clip, self.device = np.zeros(dim), np.ones(dim), 1e-4, clip, device
        self._sync()

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.mean.shape[0])
        batch_mean, batch_var, n = x.mean(0), x.var(0), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
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
        self.mean, self.var = state["mean"].numpy().astype(np.float64), state["var"].numpy().astype(np.float64)
        self.count, self.clip = float(state["count"]), float(state["clip"])
        self._sync()


# --- Prioritized replay ----------------------------------------------------------------------------
class BlockedPriorities:
    """Priorities for proportional sampling in a fixed number of tensor operations (no loop over tree levels, no
    host sync): the leaves as [blocks, BLOCK] float64, each block's sum kept current. A draw finds its block by a
    search over the block sums' running total, then its leaf by a search within that block."""

    BLOCK = 64  # ~sqrt(capacity / batch) at the paper's 1M buffer and batch 256: both searches stay small

    def __init__(self, capacity: int, device: torch.device):
        self.blocks = -(-capacity // self.BLOCK)
        self.leaves = torch.zeros(self.blocks, self.BLOCK, dtype=torch.float64, device=device)
        self.block_sums = torch.zeros(self.blocks, dtype=torch.float64, device=device)

    def update(self, indices: torch.Tensor, priorities: torch.Tensor) -> None:
        """Sets leaves; an index given twice keeps its larger priority (order-free, so deterministic on GPUs)."""
        indices = torch.as_tensor(indices, device=self.leaves.device)
        priorities = torch.as_tensor(priorities, dtype=torch.float64, device=self.leaves.device)
        self.leaves.view(-1).scatter_reduce_(0, indices, priorities, "amax", include_self=False)
        rows = indices // self.BLOCK  # a block written twice gets the same sum twice
        self.block_sums[rows] = self.leaves[rows].sum(1)

    def find(self, values: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Index i of each value v with prefix(i) <= v < prefix(i+1); `ends` = block_sums.cumsum(0)."""
        row = torch.searchsorted(ends, values, right=True).clamp_(max=self.blocks - 1)
        within = self.leaves[row].cumsum(1)
        rest = (values - (ends[row] - self.block_sums[row])).unsqueeze(1)
        return row * self.BLOCK + torch.searchsorted(within, rest, right=True).squeeze(1).clamp_(max=self.BLOCK - 1)


class PrioritizedReplayBuffer:
    """Proportional PER (Schaul et al. 2016) over raw transitions, uniform when `prioritized=False`; storage,
    priorities and the sampling generator all live on `device`. Observations are normalized when sampled, with the
    current statistics, so acting and learning see the same map."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")

    def __init__(self, capacity, obs_dim, act_dim, device, prioritized=True, alpha=0.6, eps=1e-6, seed=0):
        self.capacity, self.device, self.prioritized, self.alpha, self.eps = capacity, device, prioritized, alpha, eps
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.actions = torch.zeros(capacity, act_dim, device=device)
        self.rewards = torch.zeros(capacity, device=device)
        self.terminated = torch.zeros(capacity, device=device)
        self.priorities = BlockedPriorities(capacity, device)
        self.max_priority = torch.ones((), dtype=torch.float64, device=device)
        self.generator = torch.Generator(device).manual_seed(seed)  # replay sampling only
        self.pos, self.size = 0, 0

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        i = self.pos
        self.obs[i] = torch.as_tensor(obs, device=self.device)
        self.next_obs[i] = torch.as_tensor(next_obs, device=self.device)
        self.actions[i] = torch.as_tensor(action, device=self.device)
        self.rewards[i], self.terminated[i] = float(reward), float(terminated)
        if self.prioritized:  # new transitions get the highest priority seen so far: each is replayed soon
            self.priorities.update(torch.tensor([i]), (self.max_priority**self.alpha).reshape(1))
        self.pos, self.size = (self.pos + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, beta: float):
        """(indices, obs, actions, rewards, next_obs, terminated, importance weights), all on the device."""
        if self.prioritized:  # stratified: one draw per equal-mass segment of the priority line
            ends = self.priorities.block_sums.cumsum(0)
            total = ends[-1]
            u = torch.rand(batch_size, dtype=torch.float64, device=self.device, generator=self.generator)
            values = (torch.arange(batch_size, device=self.device) + u) * (total / batch_size)
            idx = self.priorities.find(torch.minimum(values, total * (1 - 1e-12)), ends).clamp_(max=self.size - 1)
            weights = (self.size * self.priorities.leaves.view(-1)[idx] / total) ** (-beta)
            weights = (weights / weights.max()).float()  # normalized by the batch maximum, so weights <= 1
        else:
            idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
            weights = torch.ones(batch_size, device=self.device)
        return (idx, self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx],
                weights)

    def update_priorities(self, indices: torch.Tensor, td_errors: torch.Tensor) -> None:
        if self.prioritized:
            priorities = td_errors.detach().abs().double() + self.eps
            self.max_priority = torch.maximum(self.max_priority, priorities.max())
            self.priorities.update(indices, priorities**self.alpha)

    def state_dict(self) -> dict:
        n = self.size
        return {**{name: getattr(self, name)[:n].cpu() for name in self.FIELDS},
                "priorities": self.priorities.leaves.view(-1)[:n].cpu(), "max_priority": float(self.max_priority),
                "generator": self.generator.get_state(), "pos": self.pos, "size": n, "capacity": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise UserError(f"saved replay buffer has capacity {state['capacity']}, this run {self.capacity}")
        n = state["size"]
        for name in self.FIELDS:
            getattr(self, name)[:n] = state[name].to(self.device)
        self.priorities = BlockedPriorities(self.capacity, self.device)
        self.priorities.update(torch.arange(n), state["priorities"])
        self.max_priority = torch.tensor(state["max_priority"], dtype=torch.float64, device=self.device)
        self.generator.set_state(state["generator"])
        self.pos, self.size = state["pos"], n


# --- Networks --------------------------------------------------------------------------------------
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
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
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(self.log_std(h)) + 1)
        return self.mean(h), log_std

    def sample(self, obs, dist=None):
        """Reparameterized action and its log-density (tanh and scale Jacobians included); `dist` = self(obs)."""
        mean, log_std = self(obs) if dist is None else dist
        noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
        log_jacobian = 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh)) + torch.log(self.action_scale)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi) - log_jacobian).sum(-1)
        return torch.tanh(pre_tanh) * self.action_scale + self.action_bias, log_prob

    def deterministic(self, obs):
        return torch.tanh(self(obs)[0]) * self.action_scale + self.action_bias


class TwinCritic(nn.Module):
    """Both Q-networks in one module, weights stacked on a leading axis of size 2: one batched matmul per layer
    evaluates the pair. forward returns Q of shape [2, batch]."""

    def __init__(self, obs_dim, act_dim, hidden_sizes):
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden_sizes, 1]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialization, per critic
            self.weights.append(nn.Parameter(torch.empty(2, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(2, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, obs, action):
        x = torch.cat([obs, action], -1).unsqueeze(0).expand(2, -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            x = F.relu(x) if i < len(self.weights) - 1 else x
        return x.squeeze(-1)


ADVERSARY_INIT_STD = 0.87


class Adversary(Actor):
    """nu_phi(s~|s): s~ = s + eps tanh(u), u ~ N(mean(s), std(s)) over the observation dims; the actor's MLP shape
    (and forward) with an observation-sized output (paper Appendix D)."""

    def __init__(self, obs_dim, hidden_sizes, eps):
        nn.Module.__init__(self)  # no action bounds: the output is a perturbation of s
        self.trunk = mlp([obs_dim, *hidden_sizes])
        self.trunk.append(nn.ReLU())
        self.mean = nn.Linear(hidden_sizes[-1], obs_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], obs_dim)
        self.eps = eps
        # Start at the prior: u ~ N(0, 0.87^2) makes tanh(u) nearly uniform on [-1, 1] (the std of least KL), so a
        # fresh or reset adversary does not make the KL term of the critic target jump.
        with torch.no_grad():
            self.mean.weight.zero_()
            self.mean.bias.zero_()
            self.log_std.weight.zero_()
            unit = (math.log(ADVERSARY_INIT_STD) - LOG_STD_MIN) / (0.5 * (LOG_STD_MAX - LOG_STD_MIN)) - 1
            self.log_std.bias.fill_(math.atanh(unit))

    def sample(self, obs):
        """Reparameterized s~ and log nu(s~|s), Jacobian of u -> s + eps tanh(u) included."""
        mean, log_std = self(obs)
        noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        log_jacobian = 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh)) + math.log(self.eps)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi) - log_jacobian).sum(-1)
        return obs + self.eps * torch.tanh(pre_tanh), log_prob

    def deterministic(self, obs):
        return obs + self.eps * torch.tanh(self(obs)[0])


def arch(args: Args) -> dict:
    """The networks' description in the checkpoint (the contract the attacks read)."""
    return {"hidden_sizes": list(args.hidden_sizes), "activation": "relu", "actor": "tanh_gaussian",
            "log_std_min": LOG_STD_MIN, "log_std_max": LOG_STD_MAX, "critic": "twin_stacked",
            "adversary": "tanh_gaussian_obs"}


# --- Method: VALT-SOFT update ----------------------------------------------------------------------
def linear_ramp(step: int, start: int, end: int) -> float:
    """0 before `start`, 1 after `end`, linear in between."""
    return float(step >= end) if end <= start else min(max((step - start) / (end - start), 0.0), 1.0)


class Learner:
    """Networks, optimizers and the gradient update of the method."""

    NETS = ("actor", "critic", "critic_target", "adversary")
    OPTIMIZERS = ("actor_optimizer", "critic_optimizer", "alpha_optimizer", "adversary_optimizer")

    def __init__(self, args: Args, obs_dim, act_dim, action_low, action_high, device):
        self.args, self.device, hidden = args, device, list(args.hidden_sizes)
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
        self.adversary_trained = None  # the adversary as its last reset found it (the own-adversary attack's)
        self.adversary_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=args.adv_lr, fused=True)
        self.log_prior = -obs_dim * math.log(2 * self.eps)  # log p(s~|s) of the uniform prior on the eps-ball

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def kappa(self, global_step: int) -> float:
        if self.args.kappa_start is None:
            return self.args.kappa
        frac = linear_ramp(global_step, 0, self.args.kappa_anneal_steps)
        return self.args.kappa_start + frac * (self.args.kappa - self.args.kappa_start)

    def reg_eps(self, global_step: int) -> float:
        return self.eps * linear_ramp(global_step, self.args.reg_eps_start_step, self.args.reg_eps_end_step)

    def soft_value(self, critic, obs_critic, obs_actor):
        """V(s, s~) = min_j Q_j(s, a') - alpha log pi(a'|s~), a' ~ pi(.|s~): the critic sees the true s."""
        action, log_prob = self.actor.sample(obs_actor)
        return critic(obs_critic, action).min(0).values - self.alpha * log_prob

    def critic_target_value(self, rewards, next_obs, terminated, kappa: float):
        """y = r + gamma (1-term) [V'(s', s~') (+ kappa (log nu(s~'|s') - log p(s~'|s')) with --target-kl-term)],
        s~' ~ nu_phi(.|s'): a one-sample estimate of the soft-min value; `terminated` (not truncation) cuts the
        bootstrap."""
        with torch.no_grad():
            next_obs_tilde, log_nu = self.adversary.sample(next_obs)
            if not self.args.pe_adversary:  # "w/o PE": the clean SAC target (the KL above is still logged)
                next_obs_tilde = next_obs
            next_value = self.soft_value(self.critic_target, next_obs, next_obs_tilde)
            self.kl_to_prior = (log_nu - self.log_prior).mean()  # one-sample KL(nu || p), logged
            if self.args.target_kl_term:
                next_value = next_value + kappa * (log_nu - self.log_prior)
            return rewards + self.args.gamma * (1.0 - terminated) * next_value

    def reset_adversary(self) -> None:
        """Back to the initial parameters with a fresh optimizer: the paper's periodic re-learning, which keeps the
        adversary from settling in a local minimum of the agent's value. The trained one is kept for the attacks: a
        checkpoint written at a reset step would otherwise hold only the initial adversary."""
        self.adversary_trained = {k: v.detach().clone() for k, v in self.adversary.state_dict().items()}
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
        optimize(self.adversary_optimizer, loss)
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

    def update(self, obs, actions, rewards, next_obs, terminated, weights, global_step) -> dict:
        """One VALT-SOFT step on a normalized batch. Returns scalar tensors for logging and per-sample TD errors."""
        if self.args.adv_reset_every and global_step % self.args.adv_reset_every == 0:
            self.reset_adversary()
        kappa = self.kappa(global_step)
        target = self.critic_target_value(rewards, next_obs, terminated, kappa)
        q = self.critic(obs, actions)
        td = q - target
        critic_loss = (weights * F.huber_loss(q, target.expand_as(q), reduction="none", delta=self.args.huber_delta)).sum(0).mean()
        optimize(self.critic_optimizer, critic_loss)

        # Actor: SAC's loss alpha log pi(a|s~) - min_j Q_j(s, a), a ~ pi(.|s~), s~ ~ nu_phi(.|s) (a fixed adversary;
        # "w/o PI": s~ = s); the critic sees the true s and gets no gradient.
        self.critic.requires_grad_(False)
        obs_tilde = obs
        if self.args.pi_adversary:
            with torch.no_grad():
                obs_tilde, _ = self.adversary.sample(obs)
        action, log_prob = self.actor.sample(obs_tilde)
        actor_loss = (self.alpha * log_prob - self.critic(obs, action).min(0).values).mean()
        reg_eps, reg = self.reg_eps(global_step), torch.zeros((), device=obs.device)
        if self.args.reg_coef > 0 and reg_eps > 0:
            reg = self.sa_regularizer(obs, reg_eps)
            actor_loss = actor_loss + self.args.reg_coef * reg
        optimize(self.actor_optimizer, actor_loss)
        self.critic.requires_grad_(True)
        if self.alpha_optimizer is not None:
            optimize(self.alpha_optimizer, -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean())
        adversary_loss = torch.zeros((), device=obs.device)
        for _ in range(self.args.adv_updates_per_step):
            adversary_loss = self.update_adversary(obs, kappa)

        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.args.tau)
        return {"td_errors": td.detach().abs().mean(0), "losses/critic_loss": critic_loss.detach(),
                "losses/actor_loss": actor_loss.detach(), "losses/q_mean": q.detach().mean(),
                "losses/alpha": self.alpha, "losses/entropy": -log_prob.detach().mean(), "losses/sa_reg": reg.detach(),
                "adversary/loss": adversary_loss, "adversary/kl_to_prior": self.kl_to_prior,
                "charts/kappa": torch.tensor(kappa), "charts/reg_eps": torch.tensor(reg_eps)}

    def state_dict(self) -> dict:
        parts = {name: getattr(self, name) for name in self.NETS + self.OPTIMIZERS}
        return {**{k: v.state_dict() if v is not None else None for k, v in parts.items()},
                "log_alpha": self.log_alpha.detach().cpu(), "adversary_init": self.adversary_init,
                "adversary_trained": self.adversary_trained}

    def load_state_dict(self, state: dict) -> None:
        for name in self.NETS + self.OPTIMIZERS:
            if getattr(self, name) is not None and state[name] is not None:
                getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.adversary_init = {k: v.clone() for k, v in state["adversary_init"].items()}
        trained = state.get("adversary_trained")  # absent from checkpoints written before it was kept
        self.adversary_trained = {k: v.float().clone() for k, v in trained.items()} if trained is not None else None


def optimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def behaviour_action(learner: Learner, obs_n: torch.Tensor, episode_state: dict, rng: np.random.Generator,
                     global_step: int) -> np.ndarray:
    """A fraction adv_ratio of the data (per episode, or per step) is collected on observations perturbed by the
    adversary nu_phi (SPEC §5); the buffer keeps the true states."""
    if learner.args.adv_ratio_per_step or "perturbed" not in episode_state:
        episode_state["perturbed"] = bool(rng.random() < learner.args.adv_ratio)
    with torch.no_grad():
        obs_n = learner.adversary.sample(obs_n.unsqueeze(0))[0] if episode_state["perturbed"] else obs_n.unsqueeze(0)
        return learner.actor.sample(obs_n)[0][0].cpu().numpy()


# --- Evaluation ------------------------------------------------------------------------------------
def evaluate(actor: Actor, normalizer: RunningNormalizer, env: gym.Env, episodes: int, seed: int,
             video_path: Optional[str] = None) -> list[float]:
    """Clean returns of the deterministic policy (`actor.deterministic`); the normalizer is frozen (read only).
    With `video_path` (and an env from make_eval_env with --capture-video) the first episode is also an mp4."""
    returns = []
    for episode in range(episodes):
        (obs, _), done, total = env.reset(seed=seed + episode), False, 0.0
        frames = [env.render()] if video_path and episode == 0 else None
        while not done:
            with torch.no_grad():
                obs_n = normalizer.normalize(torch.as_tensor(obs, dtype=torch.float32, device=normalizer.device))
                action = actor.deterministic(obs_n.unsqueeze(0))[0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
            if frames is not None:
                frames.append(env.render())
        if frames is not None:
            write_video(video_path, frames, env.metadata.get("render_fps", 30))
        returns.append(total)
    return returns


def make_eval_env(args, env_kwargs: dict) -> gym.Env:
    """The evaluation environment; with --capture-video it renders off-screen (EGL unless MUJOCO_GL says otherwise)."""
    if not args.capture_video:
        return make_env(args.env_id, env_kwargs)
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        env = make_env(args.env_id, {**env_kwargs, "render_mode": "rgb_array", "width": 320, "height": 240})
        follow_the_body(env)
        env.reset(seed=args.seed)
        env.render()
    except UserError:
        raise
    except Exception as e:  # no GL backend: mujoco and PyOpenGL raise their own error types
        raise UserError(f"--capture-video: cannot render {args.env_id} off-screen ({one_line(e)}); install EGL "
                        "(libegl1) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or osmesa")
    return env


def follow_the_body(env: gym.Env) -> None:
    """Render from the model's "track" camera (it follows the body) where it has one, as the MuJoCo tasks do."""
    import mujoco

    camera = mujoco.mj_name2id(env.unwrapped.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    if camera >= 0:
        env.unwrapped.mujoco_renderer.camera_id = camera


def video_file(args, step: int) -> Optional[str]:
    return os.path.join("videos", args.run_name, f"eval_step{step}.mp4") if args.capture_video else None


def write_video(path: str, frames: list, fps: int) -> None:
    import imageio.v2 as imageio  # with imageio-ffmpeg's bundled ffmpeg

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps, macro_block_size=8)
    print(f"[{METHOD}] video: {path}", flush=True)


# --- Training loop ---------------------------------------------------------------------------------
def train(args: Args) -> dict:
    """Runs the whole experiment; returns a summary (final evaluation, checkpoint path, the learner)."""
    args = resolve_args(args)
    run = Run(args)  # seeds python/numpy/torch, picks the device, reads --resume
    env_kwargs = parse_env_kwargs(args.env_id, args.env_kwargs)
    env, eval_env = make_env(args.env_id, env_kwargs), make_eval_env(args, env_kwargs)
    env.action_space.seed(args.seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    learner = Learner(args, obs_dim, act_dim, low, high, run.device)
    normalizer = RunningNormalizer(obs_dim, args.obs_clip, run.device)
    buffer = PrioritizedReplayBuffer(args.buffer_size, obs_dim, act_dim, run.device, prioritized=args.per,
                                     alpha=args.per_alpha, eps=args.per_eps, seed=args.seed)
    evaluate_policy = lambda step: evaluate(learner.actor, normalizer, eval_env, args.eval_episodes,
                                            args.seed + 10_000, video_file(args, step))
    obs, _ = env.reset(seed=args.seed)
    normalizer.update(obs)  # the normalizer sees every observation the agent acts on, reset ones included
    with run.attach(env, env_kwargs, learner, normalizer, buffer):
        ts = run.restore(TrainState(obs=obs))
        logs: dict = {}
        while ts.global_step < args.total_timesteps:
            updating, tick = ts.global_step >= args.learning_starts, time.perf_counter()
            obs_n = normalizer.normalize(torch.as_tensor(ts.obs, dtype=torch.float32, device=run.device))
            if not updating:
                action = run.rng.uniform(low, high).astype(np.float32)
            else:
                action = behaviour_action(learner, obs_n, ts.episode_state, run.rng, ts.global_step)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(ts.obs, action, reward, next_obs, terminated)  # the TRUE next state; truncation bootstraps
            normalizer.update(next_obs)
            ts.advance(next_obs, reward)
            if terminated or truncated:
                run.episode_end(ts)
                ts.obs, _ = env.reset()
                normalizer.update(ts.obs)

            if ts.global_step > args.learning_starts and buffer.size >= args.batch_size:
                beta = args.per_beta_start + (1.0 - args.per_beta_start) * min(1.0, ts.global_step / args.total_timesteps)
                idx, b_obs, b_act, b_rew, b_next, b_term, b_w = buffer.sample(args.batch_size, beta)
                logs = learner.update(normalizer.normalize(b_obs), b_act, b_rew, normalizer.normalize(b_next),
                                      b_term, b_w, ts.global_step)
                buffer.update_priorities(idx, logs["td_errors"])
                run.watch(logs)
            if updating:
                run.count_update_time(time.perf_counter() - tick)
            run.periodic(ts, ts.global_step - 1, logs, evaluate_policy,
                         progress=lambda: f"alpha {float(learner.alpha):.3f}")
        run.finish(ts, evaluate_policy)
    env.close()
    eval_env.close()
    return {"eval_returns": run.last_eval, "save_path": args.save_path, "global_step": ts.global_step,
            "learner": learner, "normalizer": normalizer, "buffer": buffer}


# --- Run harness: checkpoint, resume, divergence guard, stop (identical in every script) ------------
CHECKPOINT_FORMAT = 1


class UserError(Exception):
    """Bad input: one line, exit code 2."""


class Diverged(Exception):
    """A non-finite loss or parameter: stopped without saving, one line, exit code 3."""


class Preempted(Exception):
    """SIGTERM or SIGINT: saved and stopped, exit code 128 + args[1] (the signal number)."""


@dataclass
class TrainState:
    """What the loop carries from step to step; saved in every checkpoint for an exact resume."""
    global_step: int = 0
    episode_return: float = 0.0
    episode_length: int = 0
    episode_state: dict = field(default_factory=dict)  # a method's per-episode state (e.g. an adversary's draw)
    obs: Optional[np.ndarray] = None

    def advance(self, next_obs, reward) -> None:
        self.global_step, self.episode_length, self.obs = self.global_step + 1, self.episode_length + 1, next_obs
        self.episode_return += float(reward)


def crossed(every: int, before: int, after: int) -> bool:
    """Whether a multiple of `every` lies in (before, after] (a PPO rollout ends off the round numbers)."""
    return every > 0 and after // every > before // every


class Run:
    """Seeding, tensorboard, atomic checkpoints (never a non-finite one), exact resume, the divergence guard
    (device-side flags, read once per progress line) and SIGTERM/SIGINT (finish the step, save, stop)."""

    def __init__(self, args):
        self.args, ckpt = args, load_checkpoint(args.resume) if args.resume else None
        if ckpt is not None and ckpt.get("slim"):
            raise UserError(f"--resume: {args.resume} is a slim checkpoint (networks only, for attacks): resume from "
                            "the run's full model.pt")
        if ckpt is not None and (ckpt["method"], ckpt["env_id"]) != (METHOD, args.env_id):
            raise UserError(f"--resume: checkpoint is {ckpt['method']} on {ckpt['env_id']}, this run is {METHOD} on "
                            f"{args.env_id}")
        if args.threads:
            torch.set_num_threads(args.threads)
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        self.rng = np.random.default_rng(args.seed)  # exploration actions, episode-level coins (replay has its own)
        self.device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
        self.resume, self.last_good = ckpt, f"{args.resume} (step {ckpt['global_step']})" if ckpt else None
        self.health, self.stop_signal, self.last_eval = {}, None, []
        self.recent_returns: deque = deque(maxlen=10)
        self.progress_marks: deque = deque(maxlen=11)  # (time, step) of the last progress lines: the recent rate
        self.update_clock = [0, 0.0]  # steps and seconds of the updating phase (evaluations excluded)
        self.summary: dict = {"eval_returns": [], "eval_mean": float("nan"), "eval_std": float("nan"), "sps": 0.0}

    @contextlib.contextmanager
    def attach(self, env, env_kwargs, learner, normalizer, buffer=None, **parts):
        """What the checkpoints hold (`parts`: more objects with state dicts); tensorboard and the signal handlers
        live while the loop runs."""
        from torch.utils.tensorboard import SummaryWriter

        self.env, self.env_kwargs, self.learner, self.normalizer, self.buffer, self.parts = (
            env, env_kwargs, learner, normalizer, buffer, parts)
        self.writer = SummaryWriter(os.path.join("runs", self.args.run_name))
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
            f"|{k}|{v}|" for k, v in vars(self.args).items()))
        handlers = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            handlers = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            self.writer.close()  # also when preempted or diverged: the events since the last flush are kept
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def restore(self, ts: TrainState) -> TrainState:
        """The loop's state from --resume: networks, optimizers, normalizer, RNGs, environment, buffer."""
        ckpt, path = self.resume, self.args.resume
        self.start = (time.time(), ckpt["global_step"] if ckpt else 0)
        if ckpt is None:
            return ts
        saved = ckpt["train_state"]
        try:
            self.learner.load_state_dict(ckpt)
            for name, part in self.parts.items():
                part.load_state_dict(saved[name])
        except (RuntimeError, KeyError, ValueError) as e:  # e.g. other --hidden-sizes than the saved run
            raise UserError(f"--resume: {path} does not fit this run's networks/options ({one_line(e)})")
        self.normalizer.load_state_dict(ckpt["normalizer"])
        ts = TrainState(ckpt["global_step"], saved["episode_return"], saved["episode_length"],
                        saved.get("episode_state", {}), ts.obs)
        random.setstate(saved["python_rng"])
        np.random.set_state(tuple(saved["numpy_global_rng"]))  # stored as a list of plain values
        self.rng.bit_generator.state = saved.get("numpy_rng", self.rng.bit_generator.state)
        torch.set_rng_state(saved["torch_rng"])
        if self.device.type == "cuda" and saved.get("cuda_rng"):  # one state per GPU at save time; the count may
            states = saved["cuda_rng"]  # have changed: ours, or the first
            torch.cuda.set_rng_state(states[min(torch.cuda.current_device(), len(states) - 1)])
        buffer_path = os.path.join(os.path.dirname(path), saved.get("buffer_file") or "")  # "": the folder, no file
        if self.buffer is not None and os.path.isfile(buffer_path):
            try:
                state = torch.load(buffer_path, map_location="cpu", weights_only=True)
            except Exception as e:  # truncated or not a buffer file
                raise UserError(f"--resume: {buffer_path} is not a readable replay buffer ({type(e).__name__}); "
                                "delete it to resume with an empty buffer")
            if state.get("global_step") == ts.global_step:
                try:
                    self.buffer.load_state_dict(state)
                except (RuntimeError, KeyError, ValueError) as e:
                    raise UserError(f"--resume: {buffer_path} does not match this run's buffer ({one_line(e)})")
        if self.buffer is not None and self.buffer.size == 0:
            print(f"[resume] no replay buffer of step {ts.global_step} next to {path} (train with --save-buffer for "
                  "an exact resume): refilling from empty", flush=True)
        if saved["env_state"] is not None:
            set_env_state(self.env, saved["env_state"])
            ts.obs = saved["obs"].numpy()
        else:
            print("[resume] environment state not restorable: starting a new episode", flush=True)
        print(f"[resume] continuing {path} at step {ts.global_step}", flush=True)
        return ts

    def watch(self, logs: dict) -> None:
        """A device-side non-finite flag per logged loss: no host sync here."""
        for key, value in logs.items():
            if key.startswith(("losses/", "adversary/")):
                self.health[key] = self.health.get(key, False) | ~torch.isfinite(value)

    def check(self, step: int, when: str, names: tuple = ()) -> None:
        bad = [key for key, flag in self.health.items() if bool(flag)] + list(names)  # the guard's one host sync
        if bad:
            good = self.last_good or f"none written by this run ({self.args.save_path} untouched)"
            raise Diverged(f"non-finite {', '.join(bad[:4])} at or before step {step} ({when}); stopped without "
                           f"saving; last good checkpoint: {good}")

    def episode_end(self, ts: TrainState) -> None:
        self.recent_returns.append(ts.episode_return)
        self.writer.add_scalar("charts/episodic_return", ts.episode_return, ts.global_step)
        self.writer.add_scalar("charts/episodic_length", ts.episode_length, ts.global_step)
        ts.episode_return, ts.episode_length, ts.episode_state = 0.0, 0, {}

    def count_update_time(self, seconds: float) -> None:
        self.update_clock = [self.update_clock[0] + 1, self.update_clock[1] + seconds]

    def periodic(self, ts: TrainState, before: int, logs: dict, evaluate_policy, progress) -> None:
        """After the steps (before, ts.global_step]: progress line and scalars, evaluation, checkpoint, stop."""
        args, step = self.args, ts.global_step
        if crossed(args.log_every, before, step) or step == args.total_timesteps:
            self.check(step, f"read every --log-every {args.log_every} steps")
            now = time.time()
            self.writer.add_scalar("charts/SPS", (step - self.start[1]) / max(now - self.start[0], 1e-9), step)
            if before < getattr(args, "learning_starts", 0) <= step:  # the random-action warm-up is fast
                self.progress_marks.clear()
            since, since_step = self.progress_marks[0] if self.progress_marks else self.start
            self.progress_marks.append((now, step))
            sps = (step - since_step) / max(now - since, 1e-9)  # over the last 10 lines, for an honest ETA
            for key, value in logs.items():
                if key.startswith(("losses/", "adversary/", "charts/")):
                    self.writer.add_scalar(key, float(value), step)
            ret = f"{np.mean(self.recent_returns):9.1f}" if self.recent_returns else "      n/a"
            print(f"[{METHOD}] step {step:>9d}/{args.total_timesteps} | sps {sps:6.1f} | return(10) {ret} | "
                  f"{progress()} | eta {(args.total_timesteps - step) / max(sps, 1e-9) / 60:6.1f} min", flush=True)
        if crossed(args.eval_every, before, step) and step < args.total_timesteps:
            self.record_eval(step, evaluate_policy(step))
        saved_now = crossed(args.save_every, before, step) and step < args.total_timesteps
        if saved_now or (self.stop_signal is not None and step < args.total_timesteps):
            self.save(ts)
        if self.stop_signal is not None and step < args.total_timesteps:
            no_buffer = "" if self.buffer is None or args.save_buffer else " (no buffer: --save-buffer for an exact resume)"
            raise Preempted(f"saved {args.save_path} at step {step}{no_buffer}; continue with the same options plus "
                            f"--resume {args.save_path}", self.stop_signal)

    def record_eval(self, step: int, returns: list, final: bool = False) -> None:
        self.last_eval = returns
        self.writer.add_scalar("eval/return", np.mean(returns), step)
        self.summary.update(eval_returns=[float(r) for r in returns], eval_mean=float(np.mean(returns)),
                            eval_std=float(np.std(returns)), eval_step=step,
                            sps=(step - self.start[1]) / max(time.time() - self.start[0], 1e-9))
        if self.update_clock[0]:  # read by benchmarks/
            self.summary["sps_updating"] = self.update_clock[0] / max(self.update_clock[1], 1e-9)
        print(f"[{METHOD}] {'final eval' if final else 'eval'} at {step}: {np.mean(returns):.1f} +- "
              f"{np.std(returns):.1f}", flush=True)

    def finish(self, ts: TrainState, evaluate_policy) -> None:
        self.record_eval(ts.global_step, evaluate_policy(ts.global_step), final=True)
        self.save(ts)
        print(f"[{METHOD}] checkpoint: {self.args.save_path}", flush=True)

    def save(self, ts: TrainState) -> None:
        """Checks every flag and parameter first: a non-finite state never replaces a checkpoint."""
        args, step, space, np_state = self.args, ts.global_step, self.env.action_space, np.random.get_state()
        self.check(step, "before saving", nonfinite_tensors(self.learner.state_dict()))
        stem = os.path.splitext(args.save_path)[0]
        for path in [args.save_path] + ([f"{stem}_step{step}.pt"] if args.keep_checkpoints else []):
            buffer_file = None
            if getattr(args, "save_buffer", False) and self.buffer is not None:  # beside the checkpoint, first
                buffer_file = os.path.basename(os.path.splitext(path)[0]) + "_buffer.pt"
                atomic_save({**self.buffer.state_dict(), "global_step": step}, os.path.join(os.path.dirname(path),
                                                                                            buffer_file))
            train_state = {
                "episode_return": ts.episode_return, "episode_length": ts.episode_length,
                "episode_state": ts.episode_state, "obs": torch.as_tensor(ts.obs), "env_state": get_env_state(self.env),
                "python_rng": random.getstate(), "numpy_rng": self.rng.bit_generator.state,
                "numpy_global_rng": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
                "torch_rng": torch.get_rng_state(), "buffer_file": buffer_file,
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                **{name: part.state_dict() for name, part in self.parts.items()}}
            atomic_save({
                "checkpoint_format": CHECKPOINT_FORMAT, "method": METHOD, "env_id": args.env_id,
                "env_kwargs": self.env_kwargs, "obs_dim": self.env.observation_space.shape[0],
                "act_dim": space.shape[0], "action_low": torch.as_tensor(space.low, dtype=torch.float32),
                "action_high": torch.as_tensor(space.high, dtype=torch.float32), "arch": arch(args),
                "eps": args.attack_eps, "global_step": step, "args": dataclasses.asdict(args),
                "normalizer": self.normalizer.state_dict(), **self.learner.state_dict(), "train_state": train_state,
                "summary": self.summary}, path)
        self.last_good = f"{args.save_path} (step {step})"

    def on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is not None:  # a second signal: exit at once
            print(f"[{METHOD}] second {name}: exiting now, without saving", flush=True)
            os._exit(128 + signum)
        self.stop_signal = signum
        print(f"[{METHOD}] {name}: finishing this step, then saving (again to exit at once)", flush=True)


def one_line(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def atomic_save(obj, path: str) -> None:
    """Temp file + rename: a reader never sees a half-written file; a failed write (disk full, permission) leaves
    the previous file intact and is one clear error."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports some write failures as RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise UserError(f"cannot write {path} ({type(e).__name__}: {one_line(e)}); the previous file there is intact")


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
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}: {one_line(e)})")
    if not isinstance(ckpt, dict) or "checkpoint_format" not in ckpt or "actor" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project (no checkpoint_format / actor entries)")
    return ckpt


def main(argv: Optional[list[str]] = None) -> None:
    try:
        train(tyro.cli(Args, args=argv))
    except (UserError, Diverged) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UserError) else 3)
    except Preempted as e:
        print(f"[{METHOD}] stopped: {e.args[0]}", file=sys.stderr)
        sys.exit(128 + e.args[1])


if __name__ == "__main__":
    main()
