"""Victims trained elsewhere, behind the Victim interface every attack uses: Stable-Baselines3 SAC, TD3 (DDPG) and
PPO (A2C) `.zip` models (MlpPolicy, Box actions) with their VecNormalize statistics, and CleanRL SAC / PPO state
dicts saved as attacks/README.md shows. `common.load_victim` hands this module every file that is not a checkpoint of
this project.

Nothing here runs code from a file. An SB3 zip's `policy.pth` loads with torch.load(weights_only=True); its `data`
JSON is read as JSON only, its cloudpickled entries never decoded: layer shapes come from the state dict, action
bounds from the environment, the activation from the JSON's plain-text `policy_kwargs`. A VecNormalize `.pkl` goes
through an unpickler that rebuilds numpy arrays and RunningMeanStd fields and refuses any other global.

Each network is rebuilt layer for layer, so its outputs are the library's: SB3 critics take actions scaled to
[-1, 1]; SB3 SAC clamps log_std to [-20, 2] (ours squashes it); TD3's actor is deterministic (no sigma); a PPO
victim's mean is clipped to the action box, as the environment receives it. What a victim lacks (sigma, a critic, a
stochastic policy) is named by `lacks`, and the attacks that need it are n/a (common.NEEDS).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from attacks.common import Victim
from attacks.contract import ATTACK_EPS, AttackError, make_env, task_name
from attacks.nets import GaussianActor, TanhGaussianActor, ValueCritic

# Activations SB3 builds as activation_fn() (no arguments), by class name; others are refused.
ACTIVATIONS = {cls.__name__: cls for cls in (nn.ReLU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid)}
SB3_LOG_STD_MIN, SB3_LOG_STD_MAX = -20.0, 2.0  # stable_baselines3/sac/policies.py LOG_STD_MIN/MAX
CLEANRL_CLIP_OBS, NORMALIZER_EPSILON = 10.0, 1e-8  # CleanRL PPO's clip after NormalizeObservation; both libraries' eps


# --- observations ------------------------------------------------------------------------------------------------
class ObsNormalizer:
    """A library's frozen observation statistics (VecNormalize, gymnasium's NormalizeObservation):
    clip((x - mean) / sqrt(var + epsilon), +-clip) in float64, then float32, as both compute it. `mean` None: the
    victim sees raw observations (cast to float32, as SB3 and CleanRL feed them), and `clip` is infinite."""

    def __init__(self, mean=None, var=None, epsilon: float = NORMALIZER_EPSILON, clip: float = math.inf):
        self.mean = None if mean is None else np.asarray(mean, np.float64)
        self.std = None if var is None else np.sqrt(np.asarray(var, np.float64) + epsilon)
        self.epsilon, self.clip = float(epsilon), float(clip)

    @property
    def active(self) -> bool:
        return self.mean is not None

    def normalize(self, raw_obs) -> np.ndarray:
        x = np.asarray(raw_obs, np.float64)
        if self.active:
            x = np.clip((x - self.mean) / self.std, -self.clip, self.clip)
        return x.astype(np.float32)


@dataclass
class ExternalVictim(Victim):
    """A Victim whose networks another library trained. `missing` maps a need ("sigma", "critic", "stochastic",
    "adversary") to why this victim lacks it."""

    policy_kind: str = "sac"  # which of our interfaces it shows: "sac" (tanh action, Q(s, a)) or "ppo" (Gaussian, V)
    missing: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.policy_kind

    @property
    def eps_units(self) -> str:
        return "normalized" if self.normalizer.active else "raw"

    def lacks(self, need: str) -> Optional[str]:
        return self.missing.get(need)

    def normalize(self, raw_obs) -> torch.Tensor:
        return torch.as_tensor(self.normalizer.normalize(raw_obs), device=self.device)


# --- networks ----------------------------------------------------------------------------------------------------
def layer_indices(state: dict, prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)
                   and k[len(prefix):].split(".")[0].isdigit()})


def rebuild_mlp(state: dict, prefix: str, activation: type[nn.Module], trailing: Optional[type[nn.Module]] = None,
                where: str = "") -> nn.Sequential:
    """The nn.Sequential saved under `prefix` (Linear layers at indices 0, 2, 4, ..., `activation` between them,
    `trailing` after the last one), its weights loaded. Another layout is refused: it is not an MlpPolicy."""
    indices = layer_indices(state, prefix)
    if indices != list(range(0, 2 * len(indices), 2)):
        raise AttackError(f"{where}: the layers under {prefix!r} are not Linear/activation pairs (indices {indices}): "
                          "only MLP policies are rebuilt")
    layers: list[nn.Module] = []
    for n, i in enumerate(indices):
        weight = state.get(f"{prefix}{i}.weight")
        if weight is None or weight.dim() != 2 or f"{prefix}{i}.bias" not in state:
            raise AttackError(f"{where}: {prefix}{i} is not a Linear layer with a bias")
        if layers and weight.shape[1] != layers[-2].out_features:
            raise AttackError(f"{where}: {prefix}{i} takes {weight.shape[1]} inputs after a layer of "
                              f"{layers[-2].out_features}")
        layers.append(nn.Linear(weight.shape[1], weight.shape[0]))
        if n < len(indices) - 1:
            layers.append(activation())
    if indices and trailing is not None:
        layers.append(trailing())
    net = nn.Sequential(*layers)
    try:
        net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    except RuntimeError as e:  # extra parameters under the prefix (normalisation layers, ...)
        raise AttackError(f"{where}: the layers under {prefix!r} are not a plain MLP ({str(e).splitlines()[0][:160]})")
    return net


def linear(state: dict, prefix: str, where: str) -> nn.Linear:
    weight, bias = state.get(f"{prefix}weight"), state.get(f"{prefix}bias")
    if weight is None or bias is None or weight.dim() != 2:
        raise AttackError(f"{where}: no Linear layer {prefix}weight/bias")
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.load_state_dict({"weight": weight, "bias": bias})
    return layer


def register_bounds(module: nn.Module, action_low, action_high) -> None:
    low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
    module.register_buffer("action_low", low)
    module.register_buffer("action_high", high)
    module.register_buffer("action_scale", (high - low) / 2)
    module.register_buffer("action_bias", (high + low) / 2)


def sb3_unscale(module: nn.Module, squashed: torch.Tensor) -> torch.Tensor:
    """stable_baselines3 BasePolicy.unscale_action, the same float32 operations: [-1, 1] to the action bounds."""
    return module.action_low + (0.5 * (squashed + 1.0) * (module.action_high - module.action_low))


class ClampedTanhGaussianActor(TanhGaussianActor):
    """SB3 SAC's actor: a trunk (latent_pi), mean and log-std heads; log_std clamped to [-20, 2] where ours squashes
    it. Sampling is TanhGaussianActor's; the deterministic action is rescaled as SB3's predict() rescales it."""

    def __init__(self, trunk: nn.Module, mean: nn.Linear, log_std: nn.Linear, action_low, action_high):
        nn.Module.__init__(self)
        self.trunk, self.mean, self.log_std = trunk, mean, log_std
        register_bounds(self, action_low, action_high)

    def forward(self, obs):
        h = self.trunk(obs)
        return self.mean(h), self.log_std(h).clamp(SB3_LOG_STD_MIN, SB3_LOG_STD_MAX)

    def deterministic(self, obs):
        return sb3_unscale(self, torch.tanh(self(obs)[0]))


class DeterministicActor(nn.Module):
    """TD3's (and DDPG's) actor: mu(s) with a tanh output, rescaled to the action bounds. It has no sigma and no
    sampling: what needs them is n/a (ExternalVictim.missing), and reaching them anyway is one clear error."""

    def __init__(self, mu: nn.Module, action_low, action_high, reason: str):
        super().__init__()
        self.mu, self.reason = mu, reason
        register_bounds(self, action_low, action_high)

    def forward(self, obs):
        raise AttackError(self.reason)

    def sample(self, obs):
        raise AttackError(self.reason)

    def deterministic(self, obs):
        return sb3_unscale(self, self.mu(obs))


class RebuiltGaussianActor(GaussianActor):
    """GaussianActor's interface (unclipped mean, state-independent log-std, clip to the box) around a mean network
    rebuilt from another library (SB3: policy_net + action_net; CleanRL: actor_mean)."""

    def __init__(self, mean: nn.Module, log_std: torch.Tensor, action_low, action_high):
        nn.Module.__init__(self)
        self.mean = mean
        self.log_std = nn.Parameter(log_std.detach().reshape(-1).float().clone())
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))


class RebuiltValue(ValueCritic):
    """V(s) [batch] from a rebuilt value network."""

    def __init__(self, net: nn.Module):
        nn.Module.__init__(self)
        self.net = net


class QEnsemble(nn.Module):
    """Q(s, a) of every critic network, shape [n, batch] as TwinCritic's. `scale_actions`: the networks take the
    action scaled from the bounds to [-1, 1] (SB3's convention); otherwise the action as executed (CleanRL's)."""

    def __init__(self, nets: list[nn.Module], action_low=None, action_high=None, scale_actions: bool = False):
        super().__init__()
        self.nets, self.scale_actions = nn.ModuleList(nets), scale_actions
        if scale_actions:
            self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))

    def forward(self, obs, action):
        if self.scale_actions:  # stable_baselines3 BasePolicy.scale_action
            action = 2.0 * ((action - self.action_low) / (self.action_high - self.action_low)) - 1.0
        x = torch.cat([obs, action], -1)
        return torch.stack([net(x).squeeze(-1) for net in self.nets])


# --- a VecNormalize statistics file, unpickled without running its code --------------------------------------------
class _Record:
    """Stands in for VecNormalize and RunningMeanStd: pickle's NEWOBJ + BUILD fill its __dict__, nothing else."""


class _Inert:
    """Stands in for the spaces and random generators a VecNormalize pickle carries (not needed): accepts any
    construction and state and does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


# numpy's array, dtype and scalar reconstructors rebuild data only (as do OrderedDict and _codecs.encode, which
# pickle protocol 2 uses for bytes); RunningMeanStd and VecNormalize become records.
_NUMPY = {("numpy", "ndarray"), ("numpy", "dtype")} | \
    {(m, n) for m in ("numpy._core.multiarray", "numpy.core.multiarray") for n in ("_reconstruct", "scalar")} | \
    {(m, "_frombuffer") for m in ("numpy._core.numeric", "numpy.core.numeric")}
_RECORDS = {("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
            ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize")}
_INERT_MODULES = ("gymnasium.spaces.", "gym.spaces.", "numpy.random.")


class StatisticsUnpickler(pickle.Unpickler):
    """Rebuilds numpy data and SB3's records; any other global (os.system, a class with a __reduce__) is refused
    before it is looked up, so nothing from the file runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY or (module, name) in (("collections", "OrderedDict"), ("_codecs", "encode")):
            return super().find_class(module, name)
        if (module, name) in _RECORDS:
            return _Record
        if module.startswith(_INERT_MODULES):
            return _Inert
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def read_vecnormalize(path: str) -> ObsNormalizer:
    """The observation statistics of an SB3 VecNormalize.save() file (clip_obs, epsilon, obs_rms mean/var)."""
    if not os.path.isfile(path):
        raise AttackError(f"VecNormalize statistics not found: {path}")
    try:
        with open(path, "rb") as f:
            saved = StatisticsUnpickler(f).load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("refused global"):
            raise AttackError(f"{path}: refusing to unpickle it: it references {str(e)[len('refused global '):]}, "
                              "which a VecNormalize statistics file does not hold (only numpy arrays and "
                              "RunningMeanStd are rebuilt, no code from the file runs)")
        raise AttackError(f"{path} is not a VecNormalize statistics file ({e})")
    except Exception as e:  # truncated or foreign bytes fail in many ways
        raise AttackError(f"{path} is not a VecNormalize statistics file ({type(e).__name__}: {str(e)[:120]})")
    state = getattr(saved, "__dict__", {}) if isinstance(saved, _Record) else {}
    rms = state.get("obs_rms")
    if not state:
        raise AttackError(f"{path} is not a VecNormalize statistics file (no VecNormalize object in it)")
    if not state.get("norm_obs", True):
        return ObsNormalizer()  # saved with norm_obs=False: the policy saw raw observations
    if isinstance(rms, dict):
        raise AttackError(f"{path} normalizes a Dict observation space: only flat Box observations are supported")
    mean, var = getattr(rms, "mean", None), getattr(rms, "var", None)
    if not isinstance(mean, np.ndarray) or not isinstance(var, np.ndarray) or mean.shape != var.shape:
        raise AttackError(f"{path}: no observation mean/var arrays in its obs_rms")
    return ObsNormalizer(mean, var, float(state.get("epsilon", NORMALIZER_EPSILON)), float(state.get("clip_obs", 10.0)))


# --- Stable-Baselines3 -----------------------------------------------------------------------------------------
SB3_LAYERS = {  # algorithm family -> the state-dict prefixes of its MlpPolicy
    "sac": ("actor.latent_pi.", "actor.mu.", "actor.log_std.", "critic.qf", "critic_target.qf"),
    "td3": ("actor.mu.", "actor_target.mu.", "critic.qf", "critic_target.qf"),
    "ppo": ("mlp_extractor.policy_net.", "mlp_extractor.value_net.", "action_net.", "value_net.", "log_std"),
}


def is_sb3_zip(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return {"policy.pth", "data"} <= set(z.namelist())
    except (zipfile.BadZipFile, OSError):  # not a zip (or unreadable): the caller's loader reports it
        return False


def read_sb3_zip(path: str) -> tuple[dict, dict, str]:
    """(policy state dict, data JSON, SB3 version) of a model.save() zip, read without unpickling code."""
    try:
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read("data").decode())
            state = torch.load(io.BytesIO(z.read("policy.pth")), map_location="cpu", weights_only=True)
            version = z.read("_stable_baselines3_version").decode().strip() if "_stable_baselines3_version" in \
                z.namelist() else "unknown"
    except Exception as e:  # a damaged zip, JSON or tensor file
        raise AttackError(f"{path} is not a readable Stable-Baselines3 model ({type(e).__name__}: {str(e)[:160]})")
    if not isinstance(state, dict) or not isinstance(data, dict):
        raise AttackError(f"{path} is not a Stable-Baselines3 model (policy.pth holds no state dict)")
    return state, data, version


def plain_kwargs(data: dict) -> dict:
    """policy_kwargs as the JSON shows it: a plain dict, or (when it held a class) the cloudpickled dict's
    first-level items, classes as their "<class '...'>" text. The pickled copy is never decoded."""
    kwargs = data.get("policy_kwargs") or {}
    return {k: v for k, v in kwargs.items() if not k.startswith(":")} if isinstance(kwargs, dict) else {}


def class_name(text) -> Optional[str]:
    match = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", str(text))
    return match.group(1) if match else None


def sb3_activation(kwargs: dict, default: type[nn.Module], where: str) -> type[nn.Module]:
    if "activation_fn" not in kwargs:
        return default
    name = class_name(kwargs["activation_fn"])
    if name not in ACTIVATIONS:
        raise AttackError(f"{where}: activation_fn {kwargs['activation_fn']} is not one this reader rebuilds "
                          f"(known: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def sb3_family(state: dict, data: dict, where: str) -> tuple[str, str]:
    """(family sac|td3|ppo, algorithm name) from the state dict's layers and the JSON's plain hyper-parameters."""
    if data.get("use_sde"):
        raise AttackError(f"{where}: a gSDE policy (use_sde=True): only the MlpPolicy's Gaussian is rebuilt")
    if "actor.log_std.weight" in state:
        family, algo = "sac", "SAC"
    elif "actor.mu.0.weight" in state:
        ddpg = data.get("policy_delay") == 1 and data.get("target_noise_clip") == 0.0
        family, algo = "td3", "DDPG" if ddpg else "TD3"
    elif "action_net.weight" in state and "value_net.weight" in state:
        family, algo = "ppo", "PPO" if "clip_range" in data else "A2C"
    else:
        raise AttackError(f"{where}: not an SB3 SAC, TD3, DDPG, PPO or A2C MlpPolicy with Box actions "
                          f"(layers {', '.join(sorted(state)[:4])} ...)")
    extractor = plain_kwargs(data).get("features_extractor_class")
    if extractor is not None and class_name(extractor) != "FlattenExtractor":
        raise AttackError(f"{where}: features extractor {extractor}: only the MlpPolicy's flatten is rebuilt")
    stray = [k for k in state if not k.startswith(SB3_LAYERS[family])]
    if stray:
        raise AttackError(f"{where}: layer {stray[0]!r} is not part of an SB3 {algo} MlpPolicy (a custom features "
                          "extractor or shared layers): this architecture is not rebuilt")
    return family, algo


def sb3_shapes(state: dict, family: str, where: str) -> tuple[int, int]:
    """(observation dim, action dim) the policy's first and last layers take and give."""
    first, last = {"sac": ("actor.latent_pi.0.weight", "actor.mu.weight"),
                   "td3": ("actor.mu.0.weight", f"actor.mu.{(layer_indices(state, 'actor.mu.') or [0])[-1]}.weight"),
                   "ppo": ("mlp_extractor.policy_net.0.weight", "action_net.weight")}[family]
    if first not in state:  # no hidden layers: the output layer reads the observation
        first = last
    try:
        return state[first].shape[1], state[last].shape[0]
    except (KeyError, IndexError, AttributeError) as e:
        raise AttackError(f"{where}: cannot read the policy's input and output sizes ({type(e).__name__}: {e})")


def sb3_networks(state: dict, data: dict, family: str, algo: str, low, high, where: str):
    """(actor, critic, missing) rebuilt from an SB3 policy state dict."""
    kwargs = plain_kwargs(data)
    activation = sb3_activation(kwargs, nn.Tanh if family == "ppo" else nn.ReLU, where)
    missing: dict = {}
    if family == "ppo":
        policy = rebuild_mlp(state, "mlp_extractor.policy_net.", activation, trailing=activation, where=where)
        action_net = linear(state, "action_net.", where)
        values = nn.Sequential(*rebuild_mlp(state, "mlp_extractor.value_net.", activation, trailing=activation,
                                            where=where), linear(state, "value_net.", where))
        actor = RebuiltGaussianActor(nn.Sequential(*policy, action_net), state["log_std"], low, high)
        critic = RebuiltValue(values)
    else:
        nets = [rebuild_mlp(state, f"critic.qf{i}.", activation, where=where)
                for i in range(len({k.split(".")[1] for k in state if k.startswith("critic.qf")}))]
        if family == "sac":
            trunk = rebuild_mlp(state, "actor.latent_pi.", activation, trailing=activation, where=where)
            mean, log_std = linear(state, "actor.mu.", where), linear(state, "actor.log_std.", where)
            actor = ClampedTanhGaussianActor(trunk, mean, log_std, low, high)
        else:
            mu = rebuild_mlp(state, "actor.mu.", activation, trailing=nn.Tanh, where=where)
            reason = f"{algo}'s policy is deterministic: no sigma, no sampling"
            actor = DeterministicActor(mu, low, high, reason)
            missing.update(sigma=f"{algo} has no sigma", stochastic=f"{algo}'s policy is deterministic")
        critic = QEnsemble(nets, low, high, scale_actions=True)
        if not nets:
            missing["critic"] = "no critic in the file"
    return actor, critic, missing


# --- CleanRL -----------------------------------------------------------------------------------------------------
def cleanrl_layout(content) -> Optional[str]:
    """"sac" or "ppo" when `content` is a CleanRL file as attacks/README.md saves it (or CleanRL's own PPO
    agent.state_dict()), else None."""
    if not isinstance(content, dict) or "checkpoint_format" in content:
        return None
    if isinstance(content.get("actor"), dict) and "fc_mean.weight" in content["actor"]:
        return "sac"
    agent = content.get("agent", content)
    if isinstance(agent, dict) and "actor_mean.0.weight" in agent and "actor_logstd" in agent:
        return "ppo"
    return None


def cleanrl_sac_critic(state: dict, where: str) -> nn.Sequential:
    """CleanRL's SoftQNetwork: fc1, fc2, fc3 with ReLU between them, Q of the (observation, executed action)."""
    layers = [linear(state, f"fc{i}.", where) for i in (1, 2, 3)]
    return nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])


def cleanrl_shapes(content: dict, layout: str, where: str) -> tuple[int, int]:
    try:
        if layout == "sac":
            return content["actor"]["fc1.weight"].shape[1], content["actor"]["fc_mean.weight"].shape[0]
        agent = content.get("agent", content)
        indices = layer_indices(agent, "actor_mean.")
        return agent["actor_mean.0.weight"].shape[1], agent[f"actor_mean.{indices[-1]}.weight"].shape[0]
    except (KeyError, IndexError, AttributeError) as e:
        raise AttackError(f"{where}: not a CleanRL {layout.upper()} file ({type(e).__name__}: {e})")


def cleanrl_networks(content: dict, layout: str, low, high, where: str):
    """(actor, critic, missing, normalizer) of a CleanRL file."""
    missing: dict = {}
    rms = content.get("obs_rms")
    if rms is not None:
        try:
            normalizer = ObsNormalizer(np.asarray(rms["mean"], np.float64), np.asarray(rms["var"], np.float64),
                                       float(content.get("epsilon", NORMALIZER_EPSILON)),
                                       float(content.get("clip_obs", CLEANRL_CLIP_OBS)))
        except (KeyError, TypeError, ValueError) as e:
            raise AttackError(f"{where}: obs_rms needs 'mean' and 'var' tensors ({type(e).__name__}: {e})")
    else:
        normalizer = ObsNormalizer()
    if layout == "sac":
        state = content["actor"]
        trunk = {"fc1.": "trunk.0.", "fc2.": "trunk.2.", "fc_mean.": "mean.", "fc_logstd.": "log_std."}
        renamed = {next((new + k[len(old):] for old, new in trunk.items() if k.startswith(old)), k): v
                   for k, v in state.items()}
        try:
            hidden = [state["fc1.weight"].shape[0], state["fc2.weight"].shape[0]]
            # CleanRL's log-std squash to [-5, 2] is TanhGaussianActor's default
            actor = TanhGaussianActor(state["fc1.weight"].shape[1], state["fc_mean.weight"].shape[0], hidden, low, high)
            actor.load_state_dict(renamed)
        except (KeyError, RuntimeError) as e:
            raise AttackError(f"{where}: the actor is not CleanRL's SAC Actor ({str(e).splitlines()[0][:160]})")
        if not torch.allclose(actor.action_scale, (torch.as_tensor(high) - torch.as_tensor(low)).float() / 2):
            raise AttackError(f"{where}: the actor's action_scale does not match the environment's bounds: wrong "
                              "--env-id?")
        nets = [cleanrl_sac_critic(content[k], where) for k in ("qf1", "qf2") if isinstance(content.get(k), dict)]
        if not nets:
            missing["critic"] = "no qf1/qf2 in the file"
        return actor, QEnsemble(nets), missing, normalizer
    agent = content.get("agent", content)
    mean = rebuild_mlp(agent, "actor_mean.", nn.Tanh, where=where)
    value = rebuild_mlp(agent, "critic.", nn.Tanh, where=where)
    return RebuiltGaussianActor(mean, agent["actor_logstd"], low, high), RebuiltValue(value), missing, normalizer


# --- the environment and the victim --------------------------------------------------------------------------------
def matching_env(env_id: Optional[str], env_kwargs: Optional[dict], obs_dim: int, act_dim: int, where: str):
    """(env_kwargs, action low, action high) of the task the networks fit. Ant's observation size decides its contact
    forces (-v4: use_contact_forces, 111 vs 27 dims; -v5: include_cfrc_ext_in_observation, 105 vs 27)."""
    if not env_id:
        raise AttackError(f"{where} does not name its task: pass --env-id (e.g. Hopper-v4)")
    candidates = [dict(env_kwargs or {})]
    if env_kwargs is None and task_name(env_id) == "Ant":
        candidates += [{"use_contact_forces": True}, {"use_contact_forces": False},
                       {"include_cfrc_ext_in_observation": False}]
    seen = []
    for kwargs in candidates:
        try:
            env = make_env(env_id, kwargs)
        except AttackError:
            if kwargs is candidates[0]:
                raise
            continue
        shape, space = env.observation_space.shape[0], env.action_space
        env.close()
        seen.append(shape)
        if shape == obs_dim:
            if space.shape[0] != act_dim:
                raise AttackError(f"{where}: the policy outputs {act_dim} actions, {env_id} takes {space.shape[0]}")
            if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
                raise AttackError(f"{where}: {env_id}'s action space is unbounded")
            return kwargs, space.low.astype(np.float32), space.high.astype(np.float32)
    raise AttackError(f"{where}: the networks take {obs_dim}-dim observations, {env_id} {env_kwargs or ''} gives "
                      f"{seen[0]}: wrong --env-id or --env-kwargs?")


def file_sha1(*paths: Optional[str]) -> str:
    digest = hashlib.sha1()
    for path in paths:
        if path:
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def load_external(path: str, content=None, eps: Optional[float] = None, device: str = "cpu",
                  env_id: Optional[str] = None, env_kwargs: Optional[dict] = None,
                  vecnormalize: Optional[str] = None) -> Optional[ExternalVictim]:
    """The victim in `path` if another library wrote it (an SB3 zip, or `content`, the file's weights_only content,
    in a CleanRL layout); None otherwise. eps: normalized units when the victim has a normalizer (default: the task's
    SPEC §1 radius), raw units (and required) when it has none."""
    if content is None and not is_sb3_zip(path):
        return None
    layout = None if content is None else cleanrl_layout(content)
    if content is not None and layout is None:
        return None
    if content is None:  # SB3
        state, data, version = read_sb3_zip(path)
        family, algo = sb3_family(state, data, path)
        obs_dim, act_dim = sb3_shapes(state, family, path)
        env_kwargs, low, high = matching_env(env_id, env_kwargs, obs_dim, act_dim, path)
        actor, critic, missing = sb3_networks(state, data, family, algo, low, high, path)
        normalizer = read_vecnormalize(vecnormalize) if vecnormalize else ObsNormalizer()
        method, steps = f"sb3_{algo.lower()}", int(data.get("num_timesteps") or 0)
        source = {"library": "stable-baselines3", "version": version, "algorithm": algo,
                  "activation": sb3_activation(plain_kwargs(data), nn.Tanh if family == "ppo" else nn.ReLU,
                                               path).__name__}
        kind = "ppo" if family == "ppo" else "sac"
    else:  # CleanRL
        if vecnormalize:
            raise AttackError("--vecnormalize is for SB3 models; a CleanRL file carries its statistics as obs_rms")
        if layout == "ppo" and content.get("obs_rms") is None:
            raise AttackError(f"{path}: a CleanRL PPO agent without its observation statistics: CleanRL's PPO sees "
                              "observations through NormalizeObservation, whose mean/var agent.state_dict() does not "
                              "hold; save them with it as attacks/README.md shows")
        env_id = env_id or content.get("env_id")
        obs_dim, act_dim = cleanrl_shapes(content, layout, path)
        env_kwargs, low, high = matching_env(env_id, env_kwargs, obs_dim, act_dim, path)
        actor, critic, missing, normalizer = cleanrl_networks(content, layout, low, high, path)
        method, steps = f"cleanrl_{layout}", int(content.get("global_step", 0))
        source = {"library": "cleanrl", "algorithm": layout.upper()}
        kind = layout
    if normalizer.active and normalizer.mean.shape != (obs_dim,):
        raise AttackError(f"{vecnormalize or path}: observation statistics of shape {normalizer.mean.shape}, the "
                          f"networks take {obs_dim} dims")
    if eps is None and not normalizer.active:
        raise AttackError(f"{path}: this victim has no observation normalizer, so eps has no normalized units: pass "
                          "--eps in raw observation units" + ("" if vecnormalize or layout else
                                                              " (or --vecnormalize, if it was trained behind one)"))
    if eps is None:
        eps = ATTACK_EPS.get(task_name(env_id))
        if eps is None:
            raise AttackError(f"no default attack radius for {env_id} (known: {', '.join(ATTACK_EPS)}): pass --eps")
    if not eps > 0:
        raise AttackError(f"--eps must be > 0, got {eps}")
    missing.setdefault("adversary", "a model trained elsewhere carries no adversary")
    try:  # the rebuilt layers chain: a file whose parts disagree fails here, not inside an attack
        with torch.no_grad():
            probe = torch.zeros(1, obs_dim)
            actor.deterministic(probe)
            if "critic" in missing:
                pass
            elif kind == "ppo":
                critic(probe)
            else:
                critic(probe, actor.deterministic(probe))
    except RuntimeError as e:
        raise AttackError(f"{path}: its layers do not fit together ({str(e).splitlines()[0][:160]})")
    dev = torch.device(device)
    actor, critic = actor.to(dev).eval().requires_grad_(False), critic.to(dev).eval().requires_grad_(False)
    ckpt = {"method": method, "env_id": env_id, "env_kwargs": env_kwargs, "obs_dim": obs_dim, "act_dim": act_dim,
            "action_low": torch.as_tensor(low), "action_high": torch.as_tensor(high), "global_step": steps,
            "source": {**source, "files": [os.path.abspath(p) for p in (path, vecnormalize) if p]}}
    victim = ExternalVictim(path, ckpt, actor, critic, normalizer, float(eps), env_id, env_kwargs, obs_dim, act_dim,
                            dev, policy_kind=kind, missing=missing)
    victim._content_sha1 = file_sha1(path, vecnormalize)  # attackers trained against it are valid for these files
    return victim

