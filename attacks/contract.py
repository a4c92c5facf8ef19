"""The checkpoint contract as attacks/ reads it (README "Checkpoint contract"): the file, its environment and its
frozen observation normalizer. attacks/ imports no method script, so editing one never changes how a victim loads.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

import gymnasium as gym
import numpy as np
import torch

# The SAC family's per-task training budget (SPEC §6): the paper preset trains SAC attackers for as long.
TOTAL_TIMESTEPS = {"Hopper": 500_000, "Walker2d": 1_500_000, "HalfCheetah": 1_000_000, "Ant": 3_000_000}
# The literature's attack radius per task in normalized units (SPEC §1): the default for a victim trained elsewhere.
ATTACK_EPS = {"Hopper": 0.075, "Walker2d": 0.05, "HalfCheetah": 0.15, "Ant": 0.15}


class AttackError(Exception):
    """Bad input or a broken attacker: reported as one line, exit code 2."""


def task_name(env_id: str) -> str:
    return env_id.split("-")[0]


MUJOCO_WARNED: set = set()


def warn_once(message: str) -> None:
    """MuJoCo's warnings, each once per process: its own handler prints one at every model compile (an attack makes
    an environment per episode) and appends it to a MUJOCO_LOG.TXT in the working directory."""
    if message not in MUJOCO_WARNED:
        MUJOCO_WARNED.add(message)
        print(f"MuJoCo warning: {message}", file=sys.stderr, flush=True)


def make_env(env_id: str, env_kwargs: dict) -> gym.Env:
    if env_id not in gym.registry:
        raise AttackError(f"unknown environment id {env_id!r} (e.g. Hopper-v4, HalfCheetah-v4, Walker2d-v4, Ant-v4)")
    with contextlib.suppress(ImportError):
        import mujoco

        mujoco.set_mju_user_warning(warn_once)
    try:
        with warnings.catch_warnings():
            # The -v4 tasks are the literature's (SPEC §9); gymnasium's "upgrade to v5" notice is noise here.
            warnings.filterwarnings("ignore", message=".*is out of date.*")
            env = gym.make(env_id, **env_kwargs)
    except TypeError as e:
        raise AttackError(f"cannot make {env_id} with kwargs {env_kwargs}: {e}")
    if not isinstance(env.action_space, gym.spaces.Box):
        raise AttackError(f"{env_id} has a {type(env.action_space).__name__} action space; the victims act in a "
                          "continuous Box")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        raise AttackError(f"{env_id} needs a flat Box observation space, got {env.observation_space}")
    return env


def read_weights(path: str):
    """torch.load(weights_only=True): tensors, containers, strings and numbers, never code."""
    if not os.path.isfile(path):
        raise AttackError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip or unpickler-policy errors all mean "not a checkpoint"
        raise AttackError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})")


def load_checkpoint(path: str, ckpt=None) -> dict:
    """The checkpoint at `path` (`ckpt`: its content, when read_weights already read it)."""
    ckpt = read_weights(path) if ckpt is None else ckpt
    if not isinstance(ckpt, dict) or "checkpoint_format" not in ckpt or "actor" not in ckpt:
        raise AttackError(f"{path} is not a checkpoint of this project (no checkpoint_format / actor entries)")
    return ckpt


def atomic_save(obj, path: str) -> None:
    """Temp file + rename: a reader never sees a half-written file; a failed write leaves the previous file intact
    and is one clear error."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports some write failures as RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise AttackError(f"cannot write {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                          "the previous file there is intact")


class FrozenNormalizer:
    """The checkpoint's observation normalizer, read only: ((x - mean) / sqrt(var + 1e-8)) clipped to +-clip, with
    the float64 statistics cast to float32 as the method scripts do. Attack radii live in this normalized space."""

    def __init__(self, state: dict, device: torch.device):
        self.mean = state["mean"].numpy().astype(np.float64)
        self.var = state["var"].numpy().astype(np.float64)
        self.count, self.clip = float(state["count"]), float(state["clip"])
        self.mean_t = torch.as_tensor(self.mean, dtype=torch.float32, device=device)
        self.std_t = torch.as_tensor(np.sqrt(self.var + 1e-8), dtype=torch.float32, device=device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean_t) / self.std_t).clamp(-self.clip, self.clip)
