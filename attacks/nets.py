"""The networks of the checkpoint contract, owned by attacks/. A checkpoint's `arch` ids name them: actor
"tanh_gaussian" with critic "twin_stacked" (the SAC kind), actor "gaussian_state_independent_std" with critic
"state_value" (the PPO kind), and the adversary a checkpoint may carry (ADVERSARIES). Parameter names, shapes,
initialisation and forward passes are those the method scripts save and train with, so a saved state dict loads
unchanged and computes the same outputs.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.contract import AttackError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers (PyTorch's default initialisation) with `activation` between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def orthogonal_tanh_mlp(sizes: list[int], output_gain: float) -> nn.Sequential:
    """The PPO kind's MLP: tanh units, orthogonal weights (gain sqrt 2, the output layer `output_gain`), zero
    biases (SA-PPO src/policy_gradients/models.py initialize_weights "orthogonal")."""
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


# --- the SAC kind --------------------------------------------------------------------------------------------
class TanhGaussianActor(nn.Module):
    """arch actor "tanh_gaussian": a tanh-squashed diagonal Gaussian rescaled to the action bounds. forward gives
    (mean, log_std) before the tanh."""

    def __init__(self, obs_dim, act_dim, hidden_sizes, action_low, action_high, log_std_min: float = -5.0,
                 log_std_max: float = 2.0):
        super().__init__()
        self.trunk = mlp([obs_dim, *hidden_sizes])
        self.trunk.append(nn.ReLU())
        self.mean = nn.Linear(hidden_sizes[-1], act_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], act_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs):
        h = self.trunk(obs)
        log_std = torch.tanh(self.log_std(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return self.mean(h), log_std

    def sample(self, obs):
        """A reparameterized action and its log-density (tanh and scale Jacobians included)."""
        mean, log_std = self(obs)
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
    """arch critic "twin_stacked": both Q-networks in one module, weights [2, in, out] and biases [2, 1, out], one
    batched matmul per layer. forward(obs, action) gives Q of shape [2, batch]."""

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


# --- the PPO kind --------------------------------------------------------------------------------------------
class GaussianActor(nn.Module):
    """arch actor "gaussian_state_independent_std": a diagonal Gaussian with a state-independent log-std; the
    environment receives the action clipped to the box. `mean` is the MLP of the unclipped mean."""

    def __init__(self, obs_dim, act_dim, hidden_sizes, action_low, action_high, initial_std: float = 1.0):
        super().__init__()
        self.mean = orthogonal_tanh_mlp([obs_dim, *hidden_sizes, act_dim], output_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(initial_std)))
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))

    def forward(self, obs):
        """(mean, log_std), log_std broadcast to the batch: the interface the attacks share with the SAC kind."""
        mean = self.mean(obs)
        return mean, self.log_std.expand_as(mean)

    def sample(self, obs):
        """An unclipped Gaussian sample and its log-density."""
        mean, log_std = self(obs)
        noise = torch.randn_like(mean)
        action = mean + log_std.exp() * noise
        return action, (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def clip(self, action):
        return torch.max(torch.min(action, self.action_high), self.action_low)

    def deterministic(self, obs):
        """The action the environment executes for the mean: clipped to the box."""
        return self.clip(self.mean(obs))


class ValueCritic(nn.Module):
    """arch critic "state_value": V(s) with tanh units, output gain 1. forward gives [batch]."""

    def __init__(self, obs_dim, hidden_sizes):
        super().__init__()
        self.net = orthogonal_tanh_mlp([obs_dim, *hidden_sizes, 1], output_gain=1.0)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


# policy kind -> (arch actor, arch critic, hidden activation)
KINDS = {"sac": ("tanh_gaussian", "twin_stacked", "relu"),
         "ppo": ("gaussian_state_independent_std", "state_value", "tanh")}


def victim_kind(arch) -> str:
    arch = arch if isinstance(arch, dict) else {}
    for kind, (actor, critic, activation) in KINDS.items():
        if (arch.get("actor"), arch.get("critic"), arch.get("activation", activation)) == (actor, critic, activation):
            return kind
    raise AttackError(f"unknown architecture: actor {arch.get('actor')!r}, critic {arch.get('critic')!r}, activation "
                      f"{arch.get('activation')!r} (known: " + "; ".join(" + ".join(k) for k in KINDS.values()) + ")")


def build_victim_nets(ckpt: dict, kind: str) -> tuple[nn.Module, nn.Module]:
    arch, obs_dim, act_dim = ckpt["arch"], ckpt["obs_dim"], ckpt["act_dim"]
    hidden = list(arch["hidden_sizes"])
    if kind == "sac":
        actor = TanhGaussianActor(obs_dim, act_dim, hidden, ckpt["action_low"], ckpt["action_high"],
                                  arch.get("log_std_min", -5.0), arch.get("log_std_max", 2.0))
        return actor, TwinCritic(obs_dim, act_dim, hidden)
    return (GaussianActor(obs_dim, act_dim, hidden, ckpt["action_low"], ckpt["action_high"]),
            ValueCritic(obs_dim, hidden))


# --- adversaries a checkpoint carries ------------------------------------------------------------------------
class MeanHeadAdversary(nn.Module):
    """VALT-SOFT's nu_phi and SAC-PPO's PPO adversary: an MLP trunk and a mean head (`trunk.*`, `mean.*`; the log-std
    head or value net saved next to them is not needed). forward gives tanh(mean(s))."""

    def __init__(self, obs_dim: int, out_dim: int, hidden_sizes: list[int], activation: type[nn.Module]):
        super().__init__()
        self.trunk = mlp([obs_dim, *hidden_sizes], activation)
        self.trunk.append(activation())
        self.mean = nn.Linear(hidden_sizes[-1], out_dim)

    def forward(self, obs):
        return torch.tanh(self.mean(self.trunk(obs)))

    def load_saved(self, state: dict) -> None:
        self.load_state_dict({k: v for k, v in state.items() if k.startswith(("trunk.", "mean."))})


# arch["adversary"] -> (output space, director): an observation adversary perturbs s~ = s + eps * output; a
# director's output is a direction in the victim's action space, realised by PA-AD's PGD.
ADVERSARIES = {"tanh_gaussian_obs": ("obs", False), "ppo_gaussian_obs": ("obs", False),
               "ppo_director_action": ("act", True), "atla_hardtanh_obs": ("obs", False),
               "atla_director_action": ("act", True)}


def adversary_state(ckpt: dict) -> tuple[dict, str]:
    """The adversary an attack uses, and which one it is: VALT-SOFT's last trained one, kept at its periodic reset
    (a checkpoint written at a reset step holds the initial one as `adversary`), else the one saved."""
    if ckpt.get("adversary_trained") is not None:
        return ckpt["adversary_trained"], "trained until its last reset"
    return ckpt["adversary"], "as saved"


def build_adversary(ckpt: dict, device: torch.device) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """(output(s), director) of the checkpoint's adversary (adversary_state), its deterministic output: tanh of the
    mean (ATLA: hardtanh, as it trained; ATLA director: the mean itself)."""
    arch, obs_dim = ckpt["arch"], ckpt["obs_dim"]
    if arch.get("adversary") not in ADVERSARIES:
        raise AttackError(f"unknown adversary architecture {arch.get('adversary')!r} (known: {', '.join(ADVERSARIES)})")
    space, director = ADVERSARIES[arch["adversary"]]
    out_dim = ckpt["act_dim"] if space == "act" else obs_dim
    state = {k: v.float() if v.is_floating_point() else v for k, v in adversary_state(ckpt)[0].items()}  # bf16 copies
    if arch["adversary"].startswith("atla_"):  # a PPO-kind actor (mean MLP + log-std)
        policy = GaussianActor(obs_dim, out_dim, list(arch["adversary_hidden_sizes"]), -torch.ones(out_dim),
                               torch.ones(out_dim)).to(device)
        policy.load_state_dict(state)
        return (policy.mean if director else lambda obs: F.hardtanh(policy.mean(obs))), director
    hidden = list(arch.get("adversary_hidden_sizes", arch["hidden_sizes"]))
    net = MeanHeadAdversary(obs_dim, out_dim, hidden, ACTIVATIONS[arch.get("adversary_activation", "relu")])
    net.load_saved(state)
    return net.to(device), director
