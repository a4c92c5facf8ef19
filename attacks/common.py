"""Shared by every attack: load a checkpoint into a frozen victim, roll out episodes with a perturbation
function, enforce the eps-ball, and the small CLI plumbing (one clear error line on bad input).

All perturbations live in the victim's normalized observation space, with its normalizer frozen (SPEC §1).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import ppo  # noqa: E402  (the PPO-family policy kind: Gaussian with a state-independent std, state-value critic)
import sac  # noqa: E402  (the architecture and environment helpers every method script shares)

BALL_TOLERANCE = 1e-5


class AttackError(Exception):
    """Bad input or a broken attacker: reported as one line, exit code 2."""


# The policy kinds of the checkpoint contract (README "Checkpoint contract"): arch["actor"], arch["critic"].
KINDS = {("tanh_gaussian", "twin_stacked"): "sac", ("gaussian_state_independent_std", "state_value"): "ppo"}


@dataclass
class Victim:
    """A frozen agent. Both kinds share the actor interface the attacks use: actor(obs) -> (mean, log_std) of the
    Gaussian (SAC: before the tanh), actor.deterministic(obs) -> the action the environment executes, actor.sample.
    critic: SAC Q(s, a) of both twins [2, batch]; PPO V(s) [batch]."""
    ckpt_path: str
    ckpt: dict
    actor: sac.Actor | ppo.Actor
    critic: sac.TwinCritic | ppo.Critic
    normalizer: sac.RunningNormalizer
    eps: float
    env_id: str
    env_kwargs: dict
    obs_dim: int
    act_dim: int
    device: torch.device

    @property
    def method(self) -> str:
        return self.ckpt["method"]

    @property
    def kind(self) -> str:
        return KINDS[(self.ckpt["arch"]["actor"], self.ckpt["arch"]["critic"])]

    def make_env(self):
        return sac.make_env(self.env_id, self.env_kwargs)

    def normalize(self, raw_obs: np.ndarray) -> torch.Tensor:
        return self.normalizer.normalize(torch.as_tensor(raw_obs, dtype=torch.float32, device=self.device))

    def act(self, obs_n: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        with torch.no_grad():
            if not stochastic:
                return self.actor.deterministic(obs_n)
            action = self.actor.sample(obs_n)[0]
            return self.actor.clip(action) if self.kind == "ppo" else action  # PPO trains on clipped samples too


def load_victim(path: str, eps: Optional[float] = None, device: str = "cpu") -> Victim:
    try:
        ckpt = sac.load_checkpoint(path)
    except sac.UserError as e:
        raise AttackError(str(e))
    arch = ckpt["arch"]
    kind = KINDS.get((arch.get("actor"), arch.get("critic")))
    if kind is None:
        raise AttackError(f"{path}: unsupported architecture {arch}")
    dev = torch.device(device)
    hidden = list(arch["hidden_sizes"])
    if kind == "sac":
        actor = sac.Actor(ckpt["obs_dim"], ckpt["act_dim"], hidden, ckpt["action_low"], ckpt["action_high"]).to(dev)
        critic = sac.TwinCritic(ckpt["obs_dim"], ckpt["act_dim"], hidden).to(dev)
    else:
        actor = ppo.Actor(ckpt["obs_dim"], ckpt["act_dim"], hidden, ckpt["action_low"], ckpt["action_high"]).to(dev)
        critic = ppo.Critic(ckpt["obs_dim"], hidden).to(dev)
    try:
        actor.load_state_dict(ckpt["actor"])
        critic.load_state_dict(ckpt["critic"])
    except RuntimeError as e:
        raise AttackError(f"{path}: networks do not match the architecture it declares ({str(e).splitlines()[0]})")
    actor.eval().requires_grad_(False)
    critic.eval().requires_grad_(False)
    normalizer = sac.RunningNormalizer(ckpt["obs_dim"], ckpt["normalizer"]["clip"], dev)
    normalizer.load_state_dict(ckpt["normalizer"])
    eps = ckpt["eps"] if eps is None else eps
    if eps is None:
        raise AttackError(f"{path} stores no attack radius for {ckpt['env_id']}: pass --eps")
    if not eps > 0:
        raise AttackError(f"--eps must be > 0, got {eps}")
    try:
        env = sac.make_env(ckpt["env_id"], ckpt["env_kwargs"])
        env.close()
    except sac.UserError as e:
        raise AttackError(str(e))
    return Victim(path, ckpt, actor, critic, normalizer, float(eps), ckpt["env_id"], ckpt["env_kwargs"],
                  ckpt["obs_dim"], ckpt["act_dim"], dev)


class Attacker(Protocol):
    """Maps the victim's normalized true observation [obs_dim] to the one it is shown."""

    name: str

    def reset(self) -> None: ...

    def __call__(self, obs_n: torch.Tensor) -> torch.Tensor: ...


def check_in_ball(obs_n: torch.Tensor, obs_tilde: torch.Tensor, eps: float, name: str) -> None:
    excess = float((obs_tilde - obs_n).abs().max())
    if not excess <= eps + BALL_TOLERANCE:  # also catches NaN
        raise AttackError(f"attacker {name!r} left the eps-ball: |s~ - s|_inf = {excess:.6g} > eps = {eps:.6g}")


@dataclass
class EpisodeStats:
    returns: list[float]
    lengths: list[int]
    seconds: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def rollout(victim: Victim, attacker: Optional[Attacker], episodes: int, seed: int, stochastic: bool = False,
            progress: Optional[str] = None) -> EpisodeStats:
    """Episodes with the same environment seeds (seed + i) for every attacker, so rows are comparable.
    Every perturbed step is checked against the eps-ball."""
    env = victim.make_env()
    torch.manual_seed(seed)
    returns, lengths, start = [], [], time.time()
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        if attacker is not None:
            attacker.reset()
        done, total, length = False, 0.0, 0
        while not done:
            obs_n = victim.normalize(obs)
            if attacker is not None:
                obs_tilde = attacker(obs_n)
                check_in_ball(obs_n, obs_tilde, victim.eps, attacker.name)
                obs_n = obs_tilde
            action = victim.act(obs_n.unsqueeze(0), stochastic)[0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(length)
        if progress:
            print(f"  [{progress}] episode {episode + 1}/{episodes}: return {total:.1f}", flush=True)
    env.close()
    return EpisodeStats(returns, lengths, time.time() - start)


# --- gradient helpers shared by PGD, MAD, PA-AD and Robust Sarsa ------------------------------------------
def uniform_in_ball(obs_n: torch.Tensor, radius: float) -> torch.Tensor:
    return obs_n + radius * (2 * torch.rand_like(obs_n) - 1)


def project(obs_tilde: torch.Tensor, obs_n: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.max(torch.min(obs_tilde, obs_n + eps), obs_n - eps)


PGD_STARTS = ("step", "ball", "mixed")


def pgd_minimize(objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], obs_n: torch.Tensor, eps: float,
                 steps: int, step_size: float, restarts: int = 1, start: str = "step") -> torch.Tensor:
    """Signed-gradient descent of objective(s, s~) (per sample, s the true states) projected onto the eps-ball
    around obs_n after every step, from a random start uniform in the step box s + U(-step, step) (the
    references' start: SA-PPO src/policy_gradients/agent.py apply_attack, "critic"; `start="ball"`: uniform in
    the whole ball; "mixed": restarts alternate between the two). `restarts` independent starts run as one batch (at batch size 1, as in an attack, they cost
    about one search) and each sample keeps its lowest objective."""
    if start not in PGD_STARTS:
        raise AttackError(f"PGD start must be one of {PGD_STARTS}, got {start!r}")
    n, restarts = len(obs_n), max(1, restarts)
    obs = obs_n.repeat(restarts, *[1] * (obs_n.dim() - 1))
    radius = torch.full((restarts,) + (1,) * obs_n.dim(), min(step_size, eps) if start == "step" else eps,
                        device=obs_n.device)
    if start == "mixed":  # restarts alternate between the step box and the whole ball
        radius[1::2] = eps
        radius[0::2] = min(step_size, eps)
    x = obs + (radius * (2 * torch.rand((restarts,) + obs_n.shape, device=obs_n.device) - 1)).reshape(obs.shape)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(obs, x).sum(), x)
        x = project(x.detach() - step_size * grad.sign(), obs, eps)
    x = x.detach()
    if restarts == 1:
        return x
    with torch.no_grad():
        best = objective(obs, x).reshape(restarts, n).argmin(0)  # per sample, the restart with the lowest objective
    return x.reshape(restarts, n, *x.shape[1:])[best, torch.arange(n)]


# --- CLI plumbing ---------------------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--ckpt", required=True, help="checkpoint written by any method script")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes (paper: 20; older literature: 50)")
    p.add_argument("--eps", type=float, default=None, help="l_inf radius in normalized units (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes and of the attacker")
    p.add_argument("--stochastic", action="store_true", help="victim samples actions instead of acting on its mean")
    p.add_argument("--device", default="cpu")
    return p


def read_record(path: str) -> Optional[dict]:
    """A cache record (a trained attacker's or a Sarsa critic's JSON); None when absent. Records are written
    atomically, so an unreadable one was damaged outside this code: it is reported and recomputed, not trusted."""
    import json

    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"[cache] {path} is unreadable ({type(e).__name__}): recomputing it", flush=True)
        return None


def writable_dir(path: str) -> str:
    """Creates `path` if needed and checks it takes files, before any attacker is trained into it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise AttackError(f"cannot create the save directory {path} ({e.strerror})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise AttackError(f"the save directory {path} is not writable")
    return path


def run_cli(main: Callable[[], None]) -> None:
    try:
        main()
    except (AttackError, sac.UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def standalone(doc: str, add_args: Callable, evaluate: Callable, name: Callable[[argparse.Namespace], str]) -> None:
    """The `python attacks/<attacker>.py --ckpt ...` entry point: parse, load the victim, evaluate, report."""

    def main() -> None:
        parser = base_parser(doc)
        add_args(parser)
        args = parser.parse_args()
        if args.episodes <= 0:
            raise AttackError("--episodes must be positive")
        report(name(args), evaluate(load_victim(args.ckpt, args.eps, args.device), args)["stats"])

    run_cli(main)


def report(name: str, stats: EpisodeStats) -> None:
    print(f"{name}: {stats.mean:.1f} ± {stats.std:.1f} over {len(stats.returns)} episodes ({stats.seconds:.1f}s)",
          flush=True)


# --- slim checkpoints (what an attacker needs, for committing trained agents) ----------------------------
# Everything an attack or an evaluation reads; optimizers, target critics, RNG states and the simulator state
# (what only --resume needs) are dropped. Adversaries stay: the own-adversary column reads them.
SLIM_KEYS = ("checkpoint_format", "method", "env_id", "env_kwargs", "obs_dim", "act_dim", "action_low", "action_high",
             "arch", "actor", "critic", "log_alpha", "normalizer", "eps", "global_step", "args", "summary", "adversary")


def slim_checkpoint(src: str, dst: str) -> dict:
    """Writes the attack-relevant part of checkpoint `src` to `dst` (atomically); returns it."""
    try:
        ckpt = sac.load_checkpoint(src)
    except sac.UserError as e:
        raise AttackError(str(e))
    slim = {k: ckpt[k] for k in SLIM_KEYS if k in ckpt}
    slim["slim"] = True  # marks a file that cannot --resume
    sac.atomic_save(slim, dst)
    return slim
