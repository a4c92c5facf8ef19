"""Proximal Policy Optimization on MuJoCo, CleanRL style: one file, end to end.

The PPO row of the paper's Table 1, with the settings of the SA-PPO reference (huanzhang12/SA_PPO,
src/config_{hopper,walker,halfcheetah,ant}_vanilla_ppo.json, cited per value below): 64-64 tanh networks with
orthogonal initialization, a state-independent log-std, separate policy and value Adams, GAE, clipped surrogate,
10 epochs x 32 minibatches of a 2048-step rollout, running observation normalization (clip 10) and the
reference's return-based reward scaling (clip 10), linear learning-rate annealing.

    python ppo.py --env-id Hopper-v4
    python ppo.py --env-id Ant-v4 --total-timesteps 1000000 --resume runs/<run>/model.pt

Every PPO-family script (ppo.py, robust_ppo.py) has the same sections in the same order as the SAC scripts,
so `diff ppo.py robust_ppo.py` shows only the method.
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
import tyro

METHOD = "ppo"
CHECKPOINT_FORMAT = 1

# --- Configuration ---------------------------------------------------------------------------------
# Per-task defaults, keyed by the env id's prefix ("Hopper-v4" -> "Hopper").
ATTACK_EPS = {"Hopper": 0.075, "Walker2d": 0.05, "HalfCheetah": 0.15, "Ant": 0.15}  # SPEC §1
# SA-PPO's budgets: train_steps x t = 976 x 2048 (Ant 4882 x 2048); the paper's Table 1 PPO rows used 5M / 10M
# (sweep.py's budgets).
TOTAL_TIMESTEPS = {"Hopper": 976 * 2048, "Walker2d": 976 * 2048, "HalfCheetah": 976 * 2048, "Ant": 4882 * 2048}
# SA-PPO src/config_<task>_vanilla_ppo.json: ppo_lr_adam, val_lr, anneal_lr, value_clipping, entropy_coeff,
# initial_std. Everything else is shared (the Args defaults).
TASK_SETTINGS = {
    "Hopper": dict(policy_lr=3e-4, value_lr=2.5e-4, anneal_lr=True, clip_value_loss=False, ent_coef=0.0, initial_std=1.0),
    "Walker2d": dict(policy_lr=4e-4, value_lr=3e-4, anneal_lr=True, clip_value_loss=True, ent_coef=0.0, initial_std=1.0),
    "HalfCheetah": dict(policy_lr=3e-4, value_lr=1e-4, anneal_lr=True, clip_value_loss=True, ent_coef=0.0,
                        initial_std=0.5),
    "Ant": dict(policy_lr=5e-5, value_lr=1e-5, anneal_lr=True, clip_value_loss=True, ent_coef=0.0, initial_std=1.0),
}
# The literature's Ant has 111 observation dims (contact forces included), SPEC §9.
DEFAULT_ENV_KWARGS = {"Ant-v4": {"use_contact_forces": True}}


@dataclass
class Args:
    env_id: str = "Hopper-v4"  # Gymnasium environment id (MuJoCo -v4 tasks for the paper's settings)
    env_kwargs: str = ""  # extra gym.make kwargs as JSON, merged over the defaults (Ant-v4: {"use_contact_forces": true})
    seed: int = 1  # seed of python, numpy, torch and the environment
    total_timesteps: Optional[int] = None
    """environment steps; default SA-PPO's (976 x 2048 ~ 2M; Ant 4882 x 2048 ~ 10M), rounded down to whole rollouts"""
    num_steps: int = 2048  # environment steps per rollout (SA-PPO "t")
    gamma: float = 0.99
    gae_lambda: float = 0.95  # SA-PPO "lambda"
    update_epochs: int = 10  # policy epochs over each rollout (SA-PPO "ppo_epochs")
    value_epochs: int = 10  # value epochs over each rollout, run before the policy epochs (SA-PPO "val_epochs")
    num_minibatches: int = 32
    policy_lr: Optional[float] = None  # default per task (SA-PPO ppo_lr_adam: 3e-4 Hopper/HalfCheetah, 4e-4 Walker2d, 5e-5 Ant)
    value_lr: Optional[float] = None  # default per task (SA-PPO val_lr: 2.5e-4 Hopper, 3e-4 Walker2d, 1e-4 HalfCheetah, 1e-5 Ant)
    anneal_lr: Optional[bool] = None  # both learning rates decay linearly to 0 over the run; default per task (on)
    adam_eps: float = 1e-5
    clip_coef: float = 0.2  # surrogate ratio clip (SA-PPO clip_eps)
    clip_value_loss: Optional[bool] = None
    """max(unclipped, clipped) value loss around the rollout's values; default per task (off Hopper, else on)"""
    value_clip_coef: float = 0.2  # SA-PPO clip_val_eps
    ent_coef: Optional[float] = None  # entropy bonus; default per task (0 in every vanilla config)
    initial_std: Optional[float] = None  # initial action std; default per task (1.0; HalfCheetah 0.5)
    max_grad_norm: Optional[float] = None  # gradient-norm clip; None = off (SA-PPO clip_grad_norm -1)
    hidden_sizes: tuple[int, ...] = (64, 64)
    obs_clip: float = 10.0  # normalized observations are clipped to [-obs_clip, obs_clip] (SA-PPO clip_observations)
    scale_rewards: bool = True  # divide rewards by the running std of the discounted return (SA-PPO norm_rewards "returns")
    reward_clip: float = 10.0  # scaled rewards are clipped to [-reward_clip, reward_clip] (SA-PPO clip_rewards)
    attack_eps: Optional[float] = None
    """l_inf attack radius in normalized units stored in the checkpoint; default per task (SPEC §1)"""
    eval_every: int = 100_000  # steps between clean deterministic evaluations, at rollout ends (0: only at the end)
    eval_episodes: int = 10
    log_every: int = 10_240  # steps between console progress lines (at rollout ends; losses are logged every rollout)
    save_every: int = 500_000  # steps between checkpoints, at rollout ends (the final one is always written)
    save_path: Optional[str] = None  # checkpoint file; default runs/{run_name}/model.pt
    keep_checkpoints: bool = False  # also keep every periodic checkpoint as {save_path stem}_step{N}.pt
    resume: Optional[str] = None  # continue the run stored in this checkpoint (exact: checkpoints fall between rollouts)
    run_name: Optional[str] = None  # default {env_id}__{method}__{seed}__{unix time}
    cuda: bool = False  # PPO's 64-sample minibatches and one env run faster on the CPU (SA-PPO "cpu": true)
    threads: Optional[int] = None  # torch intra-op threads (default: torch's choice)


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
        raise UserError(f"{env_id} has a {type(env.action_space).__name__} action space; this PPO needs a continuous Box")
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

    As SA-PPO's ZFilter, every observation updates the statistics before it is normalized, and the rollout
    stores the observations normalized at collection time (the map the policy acted on). Attack radii live in
    this normalized space (SPEC §1); the checkpoint carries the final statistics.
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


class ReturnScaler:
    """SA-PPO's RewardFilter (norm_rewards "returns"): r / std(running discounted return), clipped; the return
    accumulator restarts with every episode. The std is the sample std of every accumulated return so far
    (Welford, float64; with one sample the reference's RunningStat reports |mean|)."""

    def __init__(self, gamma: float, clip: float):
        self.gamma, self.clip = gamma, clip
        self.n, self.mean, self.m2, self.ret = 0, 0.0, 0.0, 0.0

    def __call__(self, reward: float) -> float:
        self.ret = self.ret * self.gamma + reward
        self.n += 1
        delta = self.ret - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (self.ret - self.mean)
        std = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else abs(self.mean)
        return float(np.clip(reward / (std + 1e-8), -self.clip, self.clip))

    def reset(self) -> None:
        self.ret = 0.0

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "m2": self.m2, "ret": self.ret}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.mean, self.m2, self.ret = int(state["n"]), float(state["mean"]), float(state["m2"]), float(state["ret"])


# --- Rollout storage -------------------------------------------------------------------------------
class Rollout:
    """One on-policy rollout of `num_steps` transitions (normalized observations as the policy saw them).

    `next_values[t]` is V of the TRUE next state of step t: the next row's value inside an episode, V(final
    observation) at a time-limit truncation (gymnasium's truncated flag: the episode was cut, not ended), 0 at
    a termination; GAE cuts its trace at every episode end either way."""

    def __init__(self, num_steps: int, obs_dim: int, act_dim: int, device: torch.device):
        self.obs = torch.zeros(num_steps, obs_dim, device=device)
        self.actions = torch.zeros(num_steps, act_dim, device=device)
        self.log_probs = torch.zeros(num_steps, device=device)
        self.rewards = torch.zeros(num_steps, device=device)
        self.values = torch.zeros(num_steps, device=device)
        self.next_values = torch.zeros(num_steps, device=device)
        self.terminated = torch.zeros(num_steps, device=device)
        self.episode_end = torch.zeros(num_steps, device=device)  # terminated or truncated


def compute_gae(rewards, values, next_values, terminated, episode_end, gamma: float, lam: float):
    """Generalized advantage estimation over one rollout. delta_t = r_t + gamma (1 - term_t) V(s'_t) - V(s_t);
    A_t = delta_t + gamma lam (1 - end_t) A_{t+1}. Returns (advantages, value targets = A + V)."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros((), device=rewards.device)
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    for t in reversed(range(len(rewards))):
        last = deltas[t] + gamma * lam * (1.0 - episode_end[t]) * last
        advantages[t] = last
    return advantages, advantages + values


# --- Networks --------------------------------------------------------------------------------------
def mlp(sizes: list[int], output_gain: float) -> nn.Sequential:
    """Tanh MLP with orthogonal weights (gain sqrt 2, the output layer `output_gain`) and zero biases (SA-PPO
    src/policy_gradients/models.py initialize_weights "orthogonal")."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=output_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Diagonal Gaussian with a state-independent log-std (SA-PPO CtsPolicy): output gain 0.01. The environment
    receives the sample clipped to the action box (CleanRL; the reference hands the raw sample to the simulator,
    which clamps the control but charges the control cost on the raw value)."""

    def __init__(self, obs_dim, act_dim, hidden_sizes, action_low, action_high, initial_std: float = 1.0):
        super().__init__()
        self.mean = mlp([obs_dim, *hidden_sizes, act_dim], output_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(initial_std)))
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))

    def forward(self, obs):
        """(mean, log_std) with log_std broadcast to the batch (the interface the attacks share with SAC)."""
        mean = self.mean(obs)
        return mean, self.log_std.expand_as(mean)

    def log_prob(self, obs, actions, dist=None):
        """`dist` = self(obs) when the caller already has it."""
        mean, log_std = self(obs) if dist is None else dist
        return (-0.5 * ((actions - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum()

    def sample(self, obs, dist=None):
        """An unclipped Gaussian sample (what PPO's ratio needs) and its log-density."""
        mean, log_std = self(obs) if dist is None else dist
        noise = torch.randn_like(mean)
        action = mean + log_std.exp() * noise
        return action, (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def clip(self, action):
        return torch.max(torch.min(action, self.action_high), self.action_low)

    def deterministic(self, obs):
        """The action the environment executes for the mean: clipped to the box."""
        return self.clip(self.mean(obs))


class Critic(nn.Module):
    """State-value network V(s) (SA-PPO ValueDenseNet: tanh, output gain 1). forward returns [batch]."""

    def __init__(self, obs_dim, hidden_sizes):
        super().__init__()
        self.net = mlp([obs_dim, *hidden_sizes, 1], output_gain=1.0)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


# --- Method: PPO update ----------------------------------------------------------------------------
class Learner:
    """Networks, optimizers and the gradient update of the method."""

    def __init__(self, args: Args, obs_dim, act_dim, action_low, action_high, device, num_iterations: int):
        self.args, self.device, self.num_iterations = args, device, num_iterations
        hidden = list(args.hidden_sizes)
        self.actor = Actor(obs_dim, act_dim, hidden, action_low, action_high, args.initial_std).to(device)
        self.critic = Critic(obs_dim, hidden).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr, eps=args.adam_eps)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=args.value_lr, eps=args.adam_eps)
        self.eps = args.attack_eps

    def set_learning_rates(self, iteration: int) -> None:
        """SA-PPO anneal_lr: lr * (1 - k / train_steps) in rollout k = 0, 1, ... (a LambdaLR stepped per rollout)."""
        fraction = 1.0 - iteration / self.num_iterations if self.args.anneal_lr else 1.0
        self.actor_optimizer.param_groups[0]["lr"] = self.args.policy_lr * fraction
        self.critic_optimizer.param_groups[0]["lr"] = self.args.value_lr * fraction

    def minibatches(self, n: int):
        """A fresh shuffle split into --num-minibatches (torch's RNG: part of the exact resume)."""
        return torch.randperm(n, device=self.device).tensor_split(self.args.num_minibatches)

    def value_loss(self, obs, targets, old_values):
        values = self.critic(obs)
        loss = (values - targets).pow(2)
        if self.args.clip_value_loss:  # SA-PPO value_loss_gae with value_clipping
            clipped = old_values + (values - old_values).clamp(-self.args.value_clip_coef, self.args.value_clip_coef)
            loss = torch.max(loss, (clipped - targets).pow(2))
        return loss.mean()

    def policy_loss(self, obs, actions, old_log_probs, advantages):
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)  # per minibatch (surrogate_reward)
        log_ratio = self.actor.log_prob(obs, actions) - old_log_probs
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1 - self.args.clip_coef, 1 + self.args.clip_coef)
        surrogate = -torch.min(ratio * advantages, clipped * advantages).mean()
        entropy = self.actor.entropy()
        return surrogate - self.args.ent_coef * entropy, surrogate, entropy, log_ratio

    def step(self, optimizer, loss, params) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.args.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
        optimizer.step()

    def update(self, rollout: Rollout, iteration: int) -> dict:
        """Value epochs, then policy epochs (SA-PPO take_steps order) on one rollout. Returns scalar tensors."""
        args = self.args
        self.set_learning_rates(iteration)
        advantages, targets = compute_gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                          rollout.episode_end, args.gamma, args.gae_lambda)
        n = len(rollout.rewards)
        for _ in range(args.value_epochs):
            for idx in self.minibatches(n):
                value_loss = self.value_loss(rollout.obs[idx], targets[idx], rollout.values[idx])
                self.step(self.critic_optimizer, value_loss, self.critic.parameters())
        for _ in range(args.update_epochs):
            for idx in self.minibatches(n):
                loss, surrogate, entropy, log_ratio = self.policy_loss(rollout.obs[idx], rollout.actions[idx],
                                                                   rollout.log_probs[idx], advantages[idx])
                self.step(self.actor_optimizer, loss, self.actor.parameters())
        with torch.no_grad():
            # from the log-ratio: a ratio that underflows to 0 (a large policy step) leaves this diagnostic
            # finite instead of tripping the divergence guard (atla_ppo.py's adversary hit it)
            approx_kl = ((log_ratio.exp() - 1) - log_ratio).mean()
        return {"losses/value_loss": value_loss.detach(), "losses/policy_loss": surrogate.detach(),
                "losses/entropy": entropy.detach(), "losses/approx_kl": approx_kl,
                "charts/std": self.actor.log_std.detach().exp().mean(),
                "charts/learning_rate": torch.tensor(self.actor_optimizer.param_groups[0]["lr"])}

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])


# --- Behaviour policy ------------------------------------------------------------------------------
def behaviour_action(learner: Learner, obs_n: torch.Tensor):
    """PPO acts on the clean normalized observation: (unclipped sample, its log-density, V(s))."""
    with torch.no_grad():
        action, log_prob = learner.actor.sample(obs_n.unsqueeze(0))
        value = learner.critic(obs_n.unsqueeze(0))
    return action[0], log_prob[0], value[0]


# --- Evaluation ------------------------------------------------------------------------------------
def evaluate(actor: Actor, normalizer: RunningNormalizer, env: gym.Env, episodes: int, seed: int) -> list[float]:
    """Clean returns of the deterministic policy (the clipped mean); the normalizer is frozen (read only)."""
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
        "arch": {"hidden_sizes": list(args.hidden_sizes), "activation": "tanh", "actor": "gaussian_state_independent_std",
                 "critic": "state_value"},
        "eps": eps, "global_step": global_step, "args": dataclasses.asdict(args), "normalizer": normalizer.state_dict(),
        **learner.state_dict(), "train_state": train_state, "summary": summary,
    }


# --- Training loop ---------------------------------------------------------------------------------
def resolve_args(args: Args) -> Args:
    task = task_name(args.env_id)
    for key, value in TASK_SETTINGS.get(task, TASK_SETTINGS["Hopper"]).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.total_timesteps is None:
        args.total_timesteps = TOTAL_TIMESTEPS.get(task, 976 * 2048)
    if args.attack_eps is None:
        args.attack_eps = ATTACK_EPS.get(task)
    if args.attack_eps is not None and args.attack_eps <= 0:
        raise UserError(f"--attack-eps must be > 0, got {args.attack_eps}")
    if args.num_steps <= 0 or args.num_minibatches <= 0 or args.num_steps // args.num_minibatches < 2:
        raise UserError("--num-steps must be positive and --num-minibatches in [1, --num-steps / 2] (advantages are "
                        "normalized per minibatch: a minibatch needs 2 samples)")
    if args.total_timesteps < args.num_steps:
        raise UserError(f"--total-timesteps {args.total_timesteps} is less than one rollout (--num-steps {args.num_steps})")
    if args.update_epochs < 0 or args.value_epochs < 0:
        raise UserError("--update-epochs and --value-epochs must be >= 0")
    if not (args.policy_lr > 0 and args.value_lr > 0 and args.initial_std > 0):
        raise UserError("--policy-lr, --value-lr and --initial-std must be > 0")
    args.total_timesteps -= args.total_timesteps % args.num_steps  # whole rollouts
    if args.run_name is None:
        args.run_name = f"{args.env_id}__{METHOD}__{args.seed}__{int(time.time())}"
    if args.save_path is None:
        args.save_path = os.path.join("runs", args.run_name, "model.pt")
    return args


def crossed(every: int, before: int, after: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]: rollouts end off the round numbers."""
    return every > 0 and after // every > before // every


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
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    env_kwargs = parse_env_kwargs(args.env_id, args.env_kwargs)
    env = make_env(args.env_id, env_kwargs)
    eval_env = make_env(args.env_id, env_kwargs)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    eps = args.attack_eps
    num_iterations = args.total_timesteps // args.num_steps

    learner = Learner(args, obs_dim, act_dim, low, high, device, num_iterations)
    normalizer = RunningNormalizer(obs_dim, args.obs_clip, device)
    scaler = ReturnScaler(args.gamma, args.reward_clip)
    rollout = Rollout(args.num_steps, obs_dim, act_dim, device)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join("runs", args.run_name))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    global_step, episode_return, episode_length = 0, 0.0, 0
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
        if global_step % args.num_steps:
            raise UserError(f"--resume: step {global_step} is not a multiple of --num-steps {args.num_steps}")
        scaler.load_state_dict(ts["reward_scaler"])
        random.setstate(ts["python_rng"])
        np.random.set_state(tuple(ts["numpy_global_rng"]))  # stored as a list of plain values
        torch.set_rng_state(ts["torch_rng"])
        if device.type == "cuda" and ts.get("cuda_rng"):  # one state per GPU seen at save time: only ours matters,
            states, index = ts["cuda_rng"], torch.cuda.current_device()  # and the GPU count may have changed
            torch.cuda.set_rng_state(states[index if index < len(states) else 0])
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
            train_state = {
                "episode_return": episode_return, "episode_length": episode_length,
                "obs": torch.as_tensor(obs), "env_state": get_env_state(env), "reward_scaler": scaler.state_dict(),
                "python_rng": random.getstate(),
                "numpy_global_rng": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
                "torch_rng": torch.get_rng_state(),
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

    # Divergence guard: each loss leaves a device-side flag, read once per rollout (a rollout is 2048 env steps,
    # so the one host sync is free); save() also checks every parameter before writing.
    health: dict = {}
    stop = {"signal": None}

    def on_signal(signum, frame) -> None:
        if stop["signal"] is not None:  # a second signal: exit at once
            print(f"[{METHOD}] second {signal.Signals(signum).name}: exiting now, without saving", flush=True)
            os._exit(128 + signum)
        stop["signal"] = signum
        print(f"[{METHOD}] {signal.Signals(signum).name}: finishing this rollout and its update, then saving "
              "(again to exit at once)", flush=True)

    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    recent_returns: deque[float] = deque(maxlen=10)
    last_eval: list[float] = []
    start_time, start_step = time.time(), global_step
    # Last clean evaluation and throughput, stored in every checkpoint (read by benchmarks/).
    summary: dict = {"eval_returns": [], "eval_mean": float("nan"), "eval_std": float("nan"), "sps": 0.0}

    def record_eval(returns: list[float]) -> None:
        writer.add_scalar("eval/return", np.mean(returns), global_step)
        summary.update(eval_returns=[float(r) for r in returns], eval_mean=float(np.mean(returns)),
                       eval_std=float(np.std(returns)), eval_step=global_step,
                       sps=(global_step - start_step) / max(time.time() - start_time, 1e-9))
    try:
        while global_step < args.total_timesteps:
            iteration = global_step // args.num_steps
            for t in range(args.num_steps):
                obs_n = normalizer.normalize(torch.as_tensor(obs, dtype=torch.float32, device=device))
                action, log_prob, value = behaviour_action(learner, obs_n)
                next_obs, reward, terminated, truncated, _ = env.step(learner.actor.clip(action).cpu().numpy())
                rollout.obs[t], rollout.actions[t], rollout.log_probs[t], rollout.values[t] = obs_n, action, log_prob, value
                rollout.rewards[t] = scaler(float(reward)) if args.scale_rewards else float(reward)
                rollout.terminated[t], rollout.episode_end[t] = float(terminated), float(terminated or truncated)
                normalizer.update(next_obs)
                global_step += 1
                episode_return += float(reward)
                episode_length += 1
                obs = next_obs
                if truncated and not terminated:  # the time limit cut the episode: bootstrap from its last state
                    with torch.no_grad():
                        final_n = normalizer.normalize(torch.as_tensor(next_obs, dtype=torch.float32, device=device))
                        rollout.next_values[t] = learner.critic(final_n.unsqueeze(0))[0]
                if terminated or truncated:
                    recent_returns.append(episode_return)
                    writer.add_scalar("charts/episodic_return", episode_return, global_step)
                    writer.add_scalar("charts/episodic_length", episode_length, global_step)
                    obs, _ = env.reset()
                    normalizer.update(obs)
                    scaler.reset()
                    episode_return, episode_length = 0.0, 0
            # V of each next state inside the rollout, and of the state after it.
            with torch.no_grad():
                last_n = normalizer.normalize(torch.as_tensor(obs, dtype=torch.float32, device=device))
                following = torch.cat([rollout.values[1:], learner.critic(last_n.unsqueeze(0))])
            inside = rollout.episode_end == 0
            rollout.next_values[inside] = following[inside]
            rollout.next_values[rollout.terminated == 1] = 0.0

            logs = learner.update(rollout, iteration)
            for key, value in logs.items():
                if key.startswith("losses/"):
                    flag = ~torch.isfinite(value)
                    health[key] = flag if key not in health else health[key] | flag
            bad = [k for k, flag in health.items() if bool(flag)]
            if bad:
                diverged(bad, global_step, "checked every rollout")

            before = global_step - args.num_steps
            sps = (global_step - start_step) / max(time.time() - start_time, 1e-9)
            writer.add_scalar("charts/SPS", sps, global_step)
            for key, value in logs.items():
                writer.add_scalar(key, float(value), global_step)
            if crossed(args.log_every, before, global_step) or global_step == args.total_timesteps:
                ret = f"{np.mean(recent_returns):9.1f}" if recent_returns else "      n/a"
                eta = (args.total_timesteps - global_step) / max(sps, 1e-9)
                print(f"[{METHOD}] step {global_step:>9d}/{args.total_timesteps} | sps {sps:6.1f} | return(10) {ret} | "
                      f"std {float(logs['charts/std']):.3f} | eta {eta / 60:6.1f} min", flush=True)
            if crossed(args.eval_every, before, global_step) and global_step < args.total_timesteps:
                last_eval = evaluate(learner.actor, normalizer, eval_env, args.eval_episodes, args.seed + 10_000)
                record_eval(last_eval)
                print(f"[{METHOD}] eval at {global_step}: {np.mean(last_eval):.1f} +- {np.std(last_eval):.1f}", flush=True)
            saved_now = crossed(args.save_every, before, global_step) and global_step < args.total_timesteps
            if saved_now:
                save(global_step)
            if stop["signal"] is not None and global_step < args.total_timesteps:
                if not saved_now:
                    save(global_step)
                raise Preempted(f"saved {args.save_path} at step {global_step}; continue with the same options plus "
                                f"--resume {args.save_path}", stop["signal"])

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
            "normalizer": normalizer}


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
