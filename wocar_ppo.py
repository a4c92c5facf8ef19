"""WocaR-PPO (Liang et al. 2022), the WocaR-PPO row of the paper's Table 1, CleanRL style: one file, end to end.

robust_ppo.py (PPO + SA-PPO's SGLD regulariser) plus the worst-case-aware objective of umd-huang-lab/WocaR-RL
(WocaR-PPO/src, mode "robust_q_ppo": policy_gradients/steps.py worst_q_step, robust_q_ppo_step, surrogate_adv_q;
pgd_act.py worst_action_pgd; configs config_<task>_robust_q_ppo_sgld.json):

- a worst-case action value Q_w(s, a) (2x64 tanh on [s, a]) trained each rollout, after the value step, toward
  r + gamma (1 - terminated) Q_w'(s', a_w(s')), where a_w(s') minimises Q_w(s', .) by 50 signed steps of box/50 from
  mu(s') over the box of actions the policy can output under an eps-ball perturbation of s' (interval bound propagation
  through the mean network; the reference used auto_LiRPA-style bounds); Q_w' a Polyak target (tau 0.001 per minibatch);
- the policy's clipped surrogate on A~ = z(A) + q_weight z(Q_w'(s, a)) (per-minibatch z-scores), the weight growing
  over training to --q-weight (linear; Walker2d cubic).

    python wocar_ppo.py --env-id Hopper-v4

Every PPO-family script has the same sections in the same order, so `diff ppo.py wocar_ppo.py` shows only the method.
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

METHOD = "wocar_ppo"
# Per-task defaults by env id prefix: WocaR-RL WocaR-PPO/src/config_<task>_robust_q_ppo_sgld.json (Ant:
# config_ant_robust_q_ppo.json): ppo_lr_adam, val_lr, anneal_lr, value_clipping, entropy_coeff, initial_std, q_lr,
# q_weight and its schedule, robust_ppo_reg (SGLD, 10 steps); train_steps x t = 976 x 2048 (Ant 4882 x 2048), the
# paper's 2M (Ant 10M); attack_eps: SPEC §1. The committed Ant and HalfCheetah configs switched to LSTM policies
# (history_length 10) that the reference's robust_q_ppo path cannot run; their MLP settings are used.
ROBUST_Q_PPO = dict(total_timesteps=976 * 2048, anneal_lr=True, clip_value_loss=True, ent_coef=0.0, initial_std=1.0,
                    q_lr=4e-4, q_weight=0.8, q_weight_schedule="linear", reg_coef=0.1)
TASK_DEFAULTS = {
    "Hopper": dict(ROBUST_Q_PPO, attack_eps=0.075, policy_lr=3e-4, value_lr=2.5e-4, clip_value_loss=False),
    "Walker2d": dict(ROBUST_Q_PPO, attack_eps=0.05, policy_lr=4e-4, value_lr=3e-4, q_weight_schedule="exp"),
    "HalfCheetah": dict(ROBUST_Q_PPO, attack_eps=0.15, policy_lr=1e-4, value_lr=1e-3, ent_coef=1e-4, initial_std=0.5,
                        q_weight=0.5),
    "Ant": dict(ROBUST_Q_PPO, attack_eps=0.15, policy_lr=5e-5, value_lr=1e-5, total_timesteps=4882 * 2048, q_lr=3e-5,
                reg_coef=0.003)}
NEEDED = ("total_timesteps", "policy_lr", "value_lr", "anneal_lr", "clip_value_loss", "ent_coef", "initial_std",
          "q_lr", "q_weight", "q_weight_schedule", "reg_coef")
Q_WEIGHT_SCHEDULES = ("linear", "exp", "constant")
DEFAULT_ENV_KWARGS = {"Ant-v4": {"use_contact_forces": True}}  # the literature's 111-dim Ant (SPEC §9)


@dataclass
class Args:
    env_id: str = "Hopper-v4"  # Gymnasium id (the MuJoCo -v4 tasks have the paper's settings)
    env_kwargs: str = ""  # extra gym.make kwargs as JSON, merged over the defaults
    seed: int = 1  # seed of python, numpy, torch and the environment
    total_timesteps: Optional[int] = None  # environment steps, rounded down to whole rollouts; default per task
    num_steps: int = 2048  # environment steps per rollout (SA-PPO "t")
    gamma: float = 0.99
    gae_lambda: float = 0.95  # SA-PPO "lambda"
    update_epochs: int = 10  # policy epochs over each rollout (SA-PPO "ppo_epochs")
    value_epochs: int = 10  # value epochs over each rollout, run before the policy epochs (SA-PPO "val_epochs")
    num_minibatches: int = 32
    policy_lr: Optional[float] = None  # default per task (WocaR ppo_lr_adam)
    value_lr: Optional[float] = None  # default per task (WocaR val_lr)
    anneal_lr: Optional[bool] = None  # every learning rate decays linearly to 0 over the run; default per task (on)
    adam_eps: float = 1e-5
    clip_coef: float = 0.2  # surrogate ratio clip (SA-PPO clip_eps)
    clip_value_loss: Optional[bool] = None  # max(unclipped, clipped) value loss; default per task (off Hopper, else on)
    value_clip_coef: float = 0.2  # SA-PPO clip_val_eps
    ent_coef: Optional[float] = None  # entropy bonus; default per task (HalfCheetah 1e-4, else 0)
    initial_std: Optional[float] = None  # initial action std; default per task (1.0; HalfCheetah 0.5)
    max_grad_norm: Optional[float] = None  # gradient-norm clip; None = off (SA-PPO clip_grad_norm -1)
    hidden_sizes: tuple[int, ...] = (64, 64)
    obs_clip: float = 10.0  # normalized observations are clipped to [-obs_clip, obs_clip] (SA-PPO clip_observations)
    scale_rewards: bool = True  # divide rewards by the running std of the discounted return (SA-PPO norm_rewards)
    reward_clip: float = 10.0  # scaled rewards are clipped to [-reward_clip, reward_clip] (SA-PPO clip_rewards)
    attack_eps: Optional[float] = None  # l_inf radius (normalized units) of the regulariser, in the checkpoint; per task
    eval_every: int = 100_000  # steps between clean deterministic evaluations, at rollout ends (0: only at the end)
    eval_episodes: int = 10
    capture_video: bool = False  # also write each evaluation's first episode to videos/{run_name}/eval_step{N}.mp4
    log_every: int = 10_240  # steps between progress lines and scalar logs, at rollout ends
    save_every: int = 500_000  # steps between checkpoints, at rollout ends (the final one is always written)
    save_path: Optional[str] = None  # checkpoint file; default runs/{run_name}/model.pt
    keep_checkpoints: bool = False  # also keep every periodic checkpoint as {save_path stem}_step{N}.pt
    resume: Optional[str] = None  # continue the run in this checkpoint (exact: checkpoints fall between rollouts)
    run_name: Optional[str] = None  # default {env_id}__{method}__{seed}__{unix time}
    cuda: bool = False  # PPO's 64-sample minibatches and one env run faster on the CPU (SA-PPO "cpu": true)
    threads: Optional[int] = None  # torch intra-op threads (default: torch's choice)
    # SA-PPO regulariser (SPEC §6)
    reg_coef: Optional[float] = None  # weight of the regulariser in the policy loss; default per task (robust_ppo_reg)
    reg_sgld_steps: int = 10  # SGLD steps of the inner maximisation (SA-PPO robust_ppo_pgd_steps)
    reg_sgld_beta: float = 1e-5  # SGLD inverse temperature, noise sqrt(2 step beta)/(i+2) (SA-PPO get_state_kl_bound_sgld)
    reg_eps_ramp: float = 0.75  # the radius ramps 0 -> eps over this fraction of the rollouts (SA-PPO 732 of 976)
    reg_detach_std: bool = False  # keep sigma out of the regulariser's gradient (SA-PPO robust_ppo_detach_stdev, off)
    # the worst-case action value (WocaR)
    q_lr: Optional[float] = None  # Adam lr of Q_w, annealed with the others; default per task (q_lr)
    q_epochs: int = 10  # epochs of Q_w updates over each rollout (q_epochs)
    q_tau: float = 0.001  # Polyak rate of the target Q_w', applied after every minibatch (tau)
    q_weight: Optional[float] = None  # final weight of z(Q_w') in the policy's advantage; default per task (q_weight)
    q_weight_schedule: Optional[str] = None  # linear (q_weight k/K), exp ((q_weight k/K)^3: Walker2d) or constant
    worst_action_steps: int = 50  # signed steps of box/steps that minimise Q_w over the policy's action box (maxiter)
    worst_action_eps: Optional[float] = 0.01  # a_w's state ball (WocaR worst_q_step: 0.01); None: the ramped reg eps


def resolve_args(args: Args) -> Args:
    for flag, value in TASK_DEFAULTS.get(task_name(args.env_id), {}).items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    missing = [f"--{flag.replace('_', '-')}" for flag in NEEDED if getattr(args, flag) is None]
    if missing:
        raise UserError(f"{args.env_id} has no paper defaults: pass {', '.join(missing)}")
    if args.attack_eps is not None and args.attack_eps <= 0:
        raise UserError(f"--attack-eps must be > 0, got {args.attack_eps}")
    if args.num_steps <= 0 or args.num_minibatches <= 0 or args.num_steps // args.num_minibatches < 2:
        raise UserError("need --num-steps > 0, --num-minibatches in [1, --num-steps / 2]: a minibatch needs 2 samples")
    if args.total_timesteps < args.num_steps:
        raise UserError(f"--total-timesteps {args.total_timesteps} is less than one rollout (--num-steps {args.num_steps})")
    if args.update_epochs < 0 or args.value_epochs < 0:
        raise UserError("--update-epochs and --value-epochs must be >= 0")
    if not (args.policy_lr > 0 and args.value_lr > 0 and args.initial_std > 0):
        raise UserError("--policy-lr, --value-lr and --initial-std must be > 0")
    if args.q_weight_schedule not in Q_WEIGHT_SCHEDULES:
        raise UserError(f"--q-weight-schedule must be one of {Q_WEIGHT_SCHEDULES}, got {args.q_weight_schedule!r}")
    if not (args.q_lr > 0 and 0 <= args.q_weight and 0 < args.q_tau <= 1 and args.q_epochs >= 0
            and args.worst_action_steps >= 1):
        raise UserError("--q-lr > 0, --q-weight >= 0, --q-tau in (0, 1], --q-epochs >= 0, --worst-action-steps >= 1")
    if args.attack_eps is None and args.reg_coef > 0:
        raise UserError(f"no default radius for {args.env_id}: pass --attack-eps (the regulariser's eps)")
    if args.reg_coef < 0 or args.reg_sgld_steps < 1 or not args.reg_sgld_beta >= 0 or not 0 < args.reg_eps_ramp <= 1:
        raise UserError("--reg-coef must be >= 0, --reg-sgld-steps >= 1, --reg-sgld-beta >= 0, --reg-eps-ramp in (0, 1]")
    args.total_timesteps -= args.total_timesteps % args.num_steps  # whole rollouts
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


# --- Rollout ---------------------------------------------------------------------------------------
class ReturnScaler:
    """SA-PPO's RewardFilter (norm_rewards "returns"): r / std(running discounted return), clipped; the return
    accumulator restarts with every episode. The std is the sample std of every accumulated return so far
    (Welford, float64; with one sample the reference's RunningStat reports |mean|)."""

    def __init__(self, gamma: float, clip: float):
        self.gamma, self.clip, self.n, self.mean, self.m2, self.ret = gamma, clip, 0, 0.0, 0.0, 0.0

    def __call__(self, reward: float) -> float:
        self.ret, self.n = self.ret * self.gamma + reward, self.n + 1
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
        self.n, self.mean, self.m2, self.ret = int(state["n"]), *(float(state[k]) for k in ("mean", "m2", "ret"))


class Rollout:
    """One on-policy rollout, observations normalized as the policy saw them (SA-PPO's ZFilter: statistics first).
    `next_values[t]` is V of the TRUE next state of step t: the next row's V inside an episode, V(final observation)
    at a time-limit truncation (cut, not ended), 0 at a termination; `episode_end` (either) cuts GAE's trace."""

    def __init__(self, num_steps: int, obs_dim: int, act_dim: int, device: torch.device):
        self.obs, self.actions = (torch.zeros(num_steps, dim, device=device) for dim in (obs_dim, act_dim))
        self.log_probs, self.rewards, self.values, self.next_values, self.terminated, self.episode_end = torch.zeros(
            6, num_steps, device=device)

    def finish(self, last_value: torch.Tensor) -> None:  # next_values inside episodes (last_value: after the last row)
        following = torch.cat([self.values[1:], last_value])
        inside = self.episode_end == 0
        self.next_values[inside] = following[inside]
        self.next_values[self.terminated == 1] = 0.0


def compute_gae(rewards, values, next_values, terminated, episode_end, gamma: float, lam: float):
    """Generalized advantage estimation over one rollout. delta_t = r_t + gamma (1 - term_t) V(s'_t) - V(s_t);
    A_t = delta_t + gamma lam (1 - end_t) A_{t+1}. Returns (advantages, value targets = A + V)."""
    advantages, last = torch.zeros_like(rewards), torch.zeros((), device=rewards.device)
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
        linear, last = nn.Linear(fan_in, fan_out), i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=output_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear] + ([] if last else [nn.Tanh()])
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Diagonal Gaussian with a state-independent log-std (SA-PPO CtsPolicy), output gain 0.01. The environment gets
    the sample clipped to the box (CleanRL; the reference's simulator clamps it but charges the raw control cost)."""

    def __init__(self, obs_dim, act_dim, hidden_sizes, action_low, action_high, initial_std: float = 1.0):
        super().__init__()
        self.mean = mlp([obs_dim, *hidden_sizes, act_dim], output_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(initial_std)))
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))

    def forward(self, obs):  # (mean, log_std) with log_std broadcast to the batch, as SAC's actor
        mean = self.mean(obs)
        return mean, self.log_std.expand_as(mean)

    def log_prob(self, obs, actions, dist=None):  # dist: self(obs) when the caller already has it
        mean, log_std = self(obs) if dist is None else dist
        return (-0.5 * ((actions - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum()

    def sample(self, obs, dist=None):
        """An unclipped Gaussian sample (what PPO's ratio needs) and its log-density."""
        mean, log_std = self(obs) if dist is None else dist
        noise = torch.randn_like(mean)
        return mean + log_std.exp() * noise, (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def clip(self, action):
        return torch.max(torch.min(action, self.action_high), self.action_low)

    def deterministic(self, obs):
        return self.clip(self.mean(obs))


class Critic(nn.Module):
    """State-value network V(s) (SA-PPO ValueDenseNet: tanh, output gain 1). forward returns [batch]."""

    def __init__(self, obs_dim, hidden_sizes):
        super().__init__()
        self.net = mlp([obs_dim, *hidden_sizes, 1], output_gain=1.0)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


class WorstQ(Critic):
    """WocaR's worst-case action value Q_w(s, a): the value network on [s, a] (tanh, orthogonal). forward: [batch]."""

    def forward(self, obs, action):
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)


def interval_bounds(net: nn.Sequential, low: torch.Tensor, high: torch.Tensor):
    """Elementwise [lower, upper] of net(x) over the box [low, high] by interval bound propagation: a Linear layer
    maps the center c and radius r to W c + b and |W| r, a monotone activation (Tanh, ReLU) maps the endpoints."""
    for layer in net:
        if isinstance(layer, nn.Linear):
            center = F.linear((high + low) / 2, layer.weight, layer.bias)
            radius = F.linear((high - low) / 2, layer.weight.abs())
            low, high = center - radius, center + radius
        elif isinstance(layer, (nn.Tanh, nn.ReLU)):
            low, high = layer(low), layer(high)
        else:
            raise TypeError(f"interval_bounds: unsupported layer {type(layer).__name__}")
    return low, high


def action_gradient(net: nn.Sequential, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """d net([obs, action]) / d action of a Linear/Tanh MLP with one output, by its hand-written backward pass:
    autograd's numbers at about half the cost (the worst-action search runs it 50 times per minibatch)."""
    linears = list(net)[::2]
    if not all(isinstance(m, nn.Linear) for m in linears) or not all(isinstance(m, nn.Tanh) for m in list(net)[1::2]):
        raise TypeError("action_gradient: expects alternating Linear and Tanh layers")
    hidden = [torch.tanh(torch.addmm(linears[0].bias, torch.cat([obs, action], -1), linears[0].weight.t()))]
    for layer in linears[1:-1]:
        hidden.append(torch.tanh(torch.addmm(layer.bias, hidden[-1], layer.weight.t())))
    grad = linears[-1].weight  # [1, width]: broadcast over the batch
    for layer, h in zip(reversed(linears[1:-1]), reversed(hidden[1:])):
        grad = (grad * (1 - h * h)) @ layer.weight
    return (grad * (1 - hidden[0] * hidden[0])) @ linears[0].weight[:, obs.shape[-1]:]


def arch(args: Args) -> dict:
    """The networks' description in the checkpoint (the contract the attacks read)."""
    return {"hidden_sizes": list(args.hidden_sizes), "activation": "tanh", "actor": "gaussian_state_independent_std",
            "critic": "state_value"}


# --- Method: WocaR-PPO update ----------------------------------------------------------------------
class Learner:
    """Networks, optimizers and the gradient update of the method."""

    NETS = ("actor", "critic", "worst_q", "worst_q_target")
    OPTIMIZERS = ("actor_optimizer", "critic_optimizer", "worst_q_optimizer")

    def __init__(self, args: Args, obs_dim, act_dim, action_low, action_high, device, num_iterations: int):
        self.args, self.device, self.num_iterations, hidden = args, device, num_iterations, list(args.hidden_sizes)
        self.actor = Actor(obs_dim, act_dim, hidden, action_low, action_high, args.initial_std).to(device)
        self.critic = Critic(obs_dim, hidden).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr, eps=args.adam_eps)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=args.value_lr, eps=args.adam_eps)
        self.eps = args.attack_eps
        self.worst_q, self.worst_q_target = (WorstQ(obs_dim + act_dim, hidden).to(device) for _ in range(2))
        self.worst_q_target.load_state_dict(self.worst_q.state_dict())
        self.worst_q_target.requires_grad_(False)
        self.worst_q_optimizer = torch.optim.Adam(self.worst_q.parameters(), lr=args.q_lr, eps=args.adam_eps)

    def minibatches(self, n: int):  # a fresh shuffle per epoch from torch's RNG (part of the exact resume)
        return torch.randperm(n, device=self.device).tensor_split(self.args.num_minibatches)

    def value_loss(self, obs, targets, old_values):
        values = self.critic(obs)
        loss = (values - targets).pow(2)
        if self.args.clip_value_loss:  # SA-PPO value_loss_gae with value_clipping
            clipped = old_values + (values - old_values).clamp(-self.args.value_clip_coef, self.args.value_clip_coef)
            loss = torch.max(loss, (clipped - targets).pow(2))
        return loss.mean()

    def q_weight(self, iteration: int) -> float:
        """z(Q_w')'s weight in rollout k (WocaR robust_q_ppo_step): linear q_weight k/K, exp (q_weight k/K)^3, <= 1."""
        if self.args.q_weight_schedule == "constant":
            return self.args.q_weight
        weight = self.args.q_weight * min(1.0, iteration / self.num_iterations)
        return min(1.0, weight**3 if self.args.q_weight_schedule == "exp" else weight)

    def worst_action_radius(self, iteration: float) -> float:
        """Radius of the state ball whose policy-action box a_w searches (--worst-action-eps; None: scheduled)."""
        eps = self.args.worst_action_eps
        return self.reg_eps(iteration) if eps is None else eps

    def worst_action(self, obs: torch.Tensor, eps: float) -> torch.Tensor:
        """a_w(s) = argmin Q_w(s, .) over the box of means reachable from the eps-ball around s (interval bounds), by
        --worst-action-steps signed steps of (ub - lb)/steps from mu(s) (WocaR worst_action_pgd, on the online Q_w)."""
        with torch.no_grad():
            low, high = interval_bounds(self.actor.mean, obs - eps, obs + eps)
            action = self.actor.mean(obs).clamp(low, high)
            step = (high - low) / self.args.worst_action_steps
            for _ in range(self.args.worst_action_steps):
                action = torch.max(torch.min(action - step * action_gradient(self.worst_q.net, obs, action).sign(),
                                             high), low)
        return action

    def worst_q_update(self, rollout: Rollout, eps: float) -> torch.Tensor:
        """--q-epochs over the rollout's minibatches: Q_w(s, a) toward r + gamma (1 - terminated) Q_w'(s', a_w(s'))
        (WocaR worst_q_step; a time-limit truncation bootstraps), Polyak target after every minibatch."""
        loss = torch.zeros(())
        for _ in range(self.args.q_epochs):
            for idx in self.minibatches(len(rollout.rewards)):
                next_obs = rollout.next_obs[idx]
                worst = self.worst_action(next_obs, eps)
                with torch.no_grad():
                    target = rollout.rewards[idx] + self.args.gamma * (1 - rollout.terminated[idx]) * \
                        self.worst_q_target(next_obs, worst)
                loss = (self.worst_q(rollout.obs[idx], rollout.actions[idx]) - target).pow(2).mean()
                self.step(self.worst_q_optimizer, loss, self.worst_q.parameters())
                with torch.no_grad():
                    for p, p_target in zip(self.worst_q.parameters(), self.worst_q_target.parameters()):
                        p_target.lerp_(p, self.args.q_tau)
        return loss.detach()

    def reg_eps(self, progress: float) -> float:
        """auto_LiRPA LinearScheduler "start=1,length=L" as SA-PPO steps it: in rollout k (0-based), policy minibatch
        b of B, eps * min(1, (k + b/B) / L), L = --reg-eps-ramp of the rollouts; `progress` = k + b/B."""
        length = max(1.0, round(self.args.reg_eps_ramp * self.num_iterations))
        return self.eps * min(1.0, progress / length)

    def sa_regularizer(self, obs: torch.Tensor, eps: float, clean_mean=None) -> torch.Tensor:
        """max_{s~ in B_eps(s)} sum_j ((mu_j(s~) - mu_j(s)) / sigma_j)^2 by SGLD, as SA-PPO's get_state_kl_bound_sgld
        (src/policy_gradients/steps.py): start s + step*sign(noise), step eps/steps, signed ascent of
        grad + sqrt(2*step*beta)/(i+2)*N(0,1) with beta = --reg-sgld-beta (1e-5), clipped to the ball each step, sigma
        detached inside the search. mu(s) is a constant (detached); the returned mean over the batch carries gradient
        through mu(s~) and, unless --reg-detach-std, sigma. The reference differentiates the batch mean inside the
        search; SPEC §6's beta applies to each state's own gradient, as here."""
        steps = self.args.reg_sgld_steps
        step = eps / steps
        reference = (self.actor.mean(obs) if clean_mean is None else clean_mean).detach()  # `clean_mean`: mu(s), if known
        std = self.actor.log_std.exp()
        noise_scale = math.sqrt(2 * step * self.args.reg_sgld_beta)
        delta = step * torch.randn_like(obs).sign()
        for i in range(steps):
            delta.requires_grad_(True)
            distance = (((self.actor.mean(obs + delta) - reference) / std.detach()).pow(2)).sum()
            (grad,) = torch.autograd.grad(distance, delta)
            noise = noise_scale / (i + 2) * torch.randn_like(obs)
            delta = (delta.detach() + step * (grad + noise).sign()).clamp_(-eps, eps)
        sigma = std.detach() if self.args.reg_detach_std else std
        return ((self.actor.mean((obs + delta).detach()) - reference) / sigma).pow(2).sum(-1).mean()

    def policy_loss(self, obs, actions, old_log_probs, advantages, worst, q_weight: float, reg_eps: float):
        """A~ = z(A) + q_weight z(Q_w'(s, a)), z-scored per minibatch (WocaR surrogate_adv_q); `worst` = Q_w'(s, a)."""
        zscore = lambda x: (x - x.mean()) / (x.std() + 1e-8)  # noqa: E731
        advantages = zscore(advantages) + q_weight * zscore(worst)
        dist = self.actor(obs)
        log_ratio = self.actor.log_prob(obs, actions, dist) - old_log_probs
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1 - self.args.clip_coef, 1 + self.args.clip_coef)
        surrogate = -torch.min(ratio * advantages, clipped * advantages).mean()
        entropy = self.actor.entropy()
        reg = self.sa_regularizer(obs, reg_eps, dist[0]) if self.args.reg_coef > 0 and reg_eps > 0 else torch.zeros(())
        return surrogate - self.args.ent_coef * entropy + self.args.reg_coef * reg, surrogate, entropy, log_ratio, reg

    def step(self, optimizer, loss, params) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.args.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
        optimizer.step()

    def update(self, rollout: Rollout, iteration: int) -> dict:
        """Value, Q_w, then policy epochs (WocaR take_steps order) on one rollout. Returns scalar tensors."""
        args = self.args  # SA-PPO anneal_lr: lr * (1 - k / train_steps) in rollout k (a LambdaLR stepped per rollout)
        fraction = 1.0 - iteration / self.num_iterations if args.anneal_lr else 1.0
        self.actor_optimizer.param_groups[0]["lr"] = args.policy_lr * fraction
        self.critic_optimizer.param_groups[0]["lr"] = args.value_lr * fraction
        self.worst_q_optimizer.param_groups[0]["lr"] = args.q_lr * fraction
        advantages, targets = compute_gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                          rollout.episode_end, args.gamma, args.gae_lambda)
        for _ in range(args.value_epochs):
            for idx in self.minibatches(len(rollout.obs)):
                value_loss = self.value_loss(rollout.obs[idx], targets[idx], rollout.values[idx])
                self.step(self.critic_optimizer, value_loss, self.critic.parameters())
        worst_eps = self.worst_action_radius(iteration)
        worst_q_loss = self.worst_q_update(rollout, worst_eps)
        q_weight = self.q_weight(iteration)
        with torch.no_grad():  # the target does not move during the policy epochs: once for the whole rollout
            worst_values = self.worst_q_target(rollout.obs, rollout.actions)
        total = args.update_epochs * args.num_minibatches
        for epoch in range(args.update_epochs):
            for b, idx in enumerate(self.minibatches(len(rollout.obs))):
                reg_eps = self.reg_eps(iteration + (epoch * args.num_minibatches + b) / total)
                loss, surrogate, entropy, log_ratio, reg = self.policy_loss(
                    rollout.obs[idx], rollout.actions[idx], rollout.log_probs[idx], advantages[idx], worst_values[idx],
                    q_weight, reg_eps)
                self.step(self.actor_optimizer, loss, self.actor.parameters())
        with torch.no_grad():  # from the log-ratio: a ratio that underflows to 0 keeps this diagnostic finite
            approx_kl = ((log_ratio.exp() - 1) - log_ratio).mean()
        return {"losses/value_loss": value_loss.detach(), "losses/policy_loss": surrogate.detach(),
                "losses/entropy": entropy.detach(), "losses/approx_kl": approx_kl, "losses/sa_reg": reg.detach(),
                "losses/worst_q_loss": worst_q_loss, "charts/q_weight": torch.tensor(q_weight),
                "charts/worst_action_eps": torch.tensor(worst_eps), "charts/reg_eps": torch.tensor(reg_eps),
                "charts/std": self.actor.log_std.detach().exp().mean(),
                "charts/learning_rate": torch.tensor(self.actor_optimizer.param_groups[0]["lr"])}

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in self.NETS + self.OPTIMIZERS}

    def load_state_dict(self, state: dict) -> None:
        for name in self.NETS + self.OPTIMIZERS:
            getattr(self, name).load_state_dict(state[name])


def behaviour_action(learner: Learner, obs_n: torch.Tensor):
    """PPO acts on the clean normalized observation: (unclipped sample, its log-density, V(s))."""
    with torch.no_grad():
        action, log_prob = learner.actor.sample(obs_n.unsqueeze(0))
        value = learner.critic(obs_n.unsqueeze(0))
    return action[0], log_prob[0], value[0]


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
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    learner = Learner(args, obs_dim, act_dim, env.action_space.low, env.action_space.high, run.device,
                      num_iterations=args.total_timesteps // args.num_steps)
    normalizer = RunningNormalizer(obs_dim, args.obs_clip, run.device)
    scaler = ReturnScaler(args.gamma, args.reward_clip)
    rollout = Rollout(args.num_steps, obs_dim, act_dim, run.device)
    rollout.next_obs = torch.zeros(args.num_steps, obs_dim, device=run.device)  # s' as seen: Q_w's target
    as_input = lambda raw: normalizer.normalize(torch.as_tensor(raw, dtype=torch.float32, device=run.device))
    evaluate_policy = lambda step: evaluate(learner.actor, normalizer, eval_env, args.eval_episodes,
                                            args.seed + 10_000, video_file(args, step))
    obs, _ = env.reset(seed=args.seed)
    normalizer.update(obs)  # the normalizer sees every observation the agent acts on, reset ones included
    with run.attach(env, env_kwargs, learner, normalizer, reward_scaler=scaler):
        ts = run.restore(TrainState(obs=obs))
        if ts.global_step % args.num_steps:  # checkpoints fall between rollouts
            raise UserError(f"--resume: step {ts.global_step} is not a multiple of --num-steps {args.num_steps}")
        while ts.global_step < args.total_timesteps:
            before = ts.global_step
            for t in range(args.num_steps):
                obs_n = as_input(ts.obs)
                action, log_prob, value = behaviour_action(learner, obs_n)
                next_obs, reward, terminated, truncated, _ = env.step(learner.actor.clip(action).cpu().numpy())
                rollout.obs[t], rollout.actions[t], rollout.log_probs[t], rollout.values[t] = obs_n, action, log_prob, value
                rollout.rewards[t] = scaler(float(reward)) if args.scale_rewards else float(reward)
                rollout.terminated[t], rollout.episode_end[t] = float(terminated), float(terminated or truncated)
                normalizer.update(next_obs)
                rollout.next_obs[t] = as_input(next_obs)
                ts.advance(next_obs, reward)
                if truncated and not terminated:  # the time limit cut the episode: bootstrap from its last state
                    with torch.no_grad():
                        rollout.next_values[t] = learner.critic(as_input(next_obs).unsqueeze(0))[0]
                if terminated or truncated:
                    run.episode_end(ts)
                    ts.obs, _ = env.reset()
                    normalizer.update(ts.obs)
                    scaler.reset()
            with torch.no_grad():
                rollout.finish(learner.critic(as_input(ts.obs).unsqueeze(0)))
            logs = learner.update(rollout, before // args.num_steps)
            run.watch(logs)
            run.check(ts.global_step, "checked every rollout")  # one host sync per rollout: free at 2048 env steps
            run.periodic(ts, before, logs, evaluate_policy, progress=lambda: f"std {float(logs['charts/std']):.3f}")
        run.finish(ts, evaluate_policy)
    env.close()
    eval_env.close()
    return {"eval_returns": run.last_eval, "save_path": args.save_path, "global_step": ts.global_step,
            "learner": learner, "normalizer": normalizer}


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
