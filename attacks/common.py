"""Shared by every attack: load a checkpoint into a frozen victim, roll out episodes with a perturbation
function, enforce the eps-ball, and the small CLI plumbing (one clear error line on bad input).

All perturbations live in the victim's normalized observation space, with its normalizer frozen (SPEC §1).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional, Protocol, TypeVar, get_args

import numpy as np
import torch
import tyro

from attacks.contract import AttackError, FrozenNormalizer, atomic_save, load_checkpoint, make_env, read_weights
from attacks.nets import build_victim_nets, victim_kind

BALL_TOLERANCE = 1e-5


@dataclass
class Victim:
    """A frozen agent. Both kinds share the actor interface the attacks use: actor(obs) -> (mean, log_std) of the
    Gaussian (SAC: before the tanh), actor.deterministic(obs) -> the action the environment executes, actor.sample.
    critic: SAC Q(s, a) of both twins [2, batch]; PPO V(s) [batch]."""
    ckpt_path: str
    ckpt: dict
    actor: torch.nn.Module  # nets.TanhGaussianActor | nets.GaussianActor
    critic: torch.nn.Module  # nets.TwinCritic | nets.ValueCritic
    normalizer: FrozenNormalizer
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
        return victim_kind(self.ckpt["arch"])

    def make_env(self):
        return make_env(self.env_id, self.env_kwargs)

    def normalize(self, raw_obs: np.ndarray) -> torch.Tensor:
        return self.normalizer.normalize(torch.as_tensor(raw_obs, dtype=torch.float32, device=self.device))

    def act(self, obs_n: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        with torch.no_grad():
            if not stochastic:
                return self.actor.deterministic(obs_n)
            action = self.actor.sample(obs_n)[0]
            return self.actor.clip(action) if self.kind == "ppo" else action  # PPO trains on clipped samples too

    @property
    def eps_units(self) -> str:
        return "normalized"

    def lacks(self, need: str) -> Optional[str]:
        """Why this victim lacks `need` (NEEDS), or None. Our checkpoints have everything; models trained elsewhere
        may not (external.ExternalVictim)."""
        return None


# What an attack needs of a victim beyond its actions, and the parts of an attack that need more (dropped, and said
# so in its settings, when the victim lacks it): flag -> (need, the flag's value without it).
NEEDS = {"mad": ("sigma",), "pgd": ("critic",), "valt_soft_adv": ("adversary",)}
PARTS = {"rs": {"rs_mad_ratio": ("sigma", 0.0), "rs_explore": ("stochastic", "deterministic")}}


def unavailable(attack: str, victim: Victim) -> Optional[str]:
    """"n/a: <reason>" when the victim lacks what `attack` needs, else None."""
    reasons = [r for r in (victim.lacks(need) for need in NEEDS.get(attack, ())) if r]
    return f"n/a: {'; '.join(reasons)}" if reasons else None


def adapt(attack: str, victim: Victim, args) -> dict:
    """Sets the flags of `attack`'s parts the victim cannot serve to their value without it; returns
    {flag: "<value> (n/a: <reason>)"} for each one changed."""
    notes = {}
    for flag, (need, value) in PARTS.get(attack, {}).items():
        reason = victim.lacks(need)
        if reason and getattr(args, flag) != value:
            setattr(args, flag, value)
            notes[flag] = f"{value} (n/a: {reason})"
    return notes


def load_victim(path: str, eps: Optional[float] = None, device: str = "cpu", env_id: Optional[str] = None,
                env_kwargs: Optional[dict] = None, vecnormalize: Optional[str] = None) -> Victim:
    """A checkpoint of this project, or a model another library trained (env_id, env_kwargs, vecnormalize: its
    task and statistics, which such files do not carry; attacks/external.py)."""
    from attacks import external  # below this module: it builds on Victim

    content = None if os.path.isfile(path) and external.is_sb3_zip(path) else read_weights(path)
    foreign = external.load_external(path, content, eps, device, env_id, env_kwargs, vecnormalize)
    if foreign is not None:
        return foreign
    if isinstance(content, dict) and "checkpoint_format" in content and (env_id or env_kwargs or vecnormalize):
        raise AttackError(f"{path} is a checkpoint of this project, which names its task and normalizer: "
                          "--env-id, --env-kwargs and --vecnormalize are for models trained elsewhere")
    if not (isinstance(content, dict) and "checkpoint_format" in content):
        raise AttackError(f"{path} is neither a checkpoint of this project, a Stable-Baselines3 zip nor a CleanRL "
                          "file as attacks/README.md saves it")
    ckpt = load_checkpoint(path, content)
    try:
        kind = victim_kind(ckpt["arch"])
    except AttackError as e:
        raise AttackError(f"{path}: {e}")
    dev = torch.device(device)
    actor, critic = (net.to(dev) for net in build_victim_nets(ckpt, kind))
    try:
        actor.load_state_dict(ckpt["actor"])
        critic.load_state_dict(ckpt["critic"])
    except RuntimeError as e:
        raise AttackError(f"{path}: networks do not match the architecture it declares ({str(e).splitlines()[0]})")
    actor.eval().requires_grad_(False)
    critic.eval().requires_grad_(False)
    normalizer = FrozenNormalizer(ckpt["normalizer"], dev)
    eps = ckpt["eps"] if eps is None else eps
    if eps is None:
        raise AttackError(f"{path} stores no attack radius for {ckpt['env_id']}: pass --eps")
    if not eps > 0:
        raise AttackError(f"--eps must be > 0, got {eps}")
    make_env(ckpt["env_id"], ckpt["env_kwargs"]).close()
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


PROGRESS_AFTER_S = 20.0  # an evaluation running longer than this prints a line per episode with its ETA


class Progress:
    """"elapsed, eta" for progress lines, the ETA from the rate since the previous line, so a phase that runs at
    another speed (an attacker's random-action warm-up) is not averaged into the remaining time."""

    def __init__(self, total: int):
        self.total, self.start = total, time.time()
        self.last_time, self.last_done = self.start, 0

    def __call__(self, done: int) -> str:
        now = time.time()
        rate = (done - self.last_done) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_done = now, done
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        return f"{now - self.start:.0f}s, eta {eta:.0f}s"


def rollout(victim: Victim, attacker: Optional[Attacker], episodes: int, seed: int, stochastic: bool = False,
            progress: Optional[str] = None, on_step: Optional[Callable[[int, Any], None]] = None) -> EpisodeStats:
    """Episodes with the same environment seeds (seed + i) for every attacker, so rows are comparable.
    Every perturbed step is checked against the eps-ball. Progress lines: always with `progress` (their label),
    otherwise once the evaluation has run PROGRESS_AFTER_S seconds. Natural episodes and attackers marked
    `batched` (stateless, per-state: uniform, MAD, PGD, Robust Sarsa's) run all episodes side by side.
    `on_step(i, env)` is called after every step of episode i (diagnostics that read the simulator's state)."""
    if attacker is None or getattr(attacker, "batched", False):
        return rollout_side_by_side(victim, attacker, episodes, seed, stochastic, progress, on_step)
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
            if on_step is not None:
                on_step(episode, env)
            total += float(reward)
            length += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(length)
        elapsed = time.time() - start
        if progress or elapsed > PROGRESS_AFTER_S:
            label = progress or (attacker.name if attacker is not None else "natural")
            eta = elapsed / (episode + 1) * (episodes - episode - 1)
            print(f"  [{label}] episode {episode + 1}/{episodes}: return {total:.1f} | {elapsed:.0f}s, eta {eta:.0f}s",
                  flush=True)
    env.close()
    return EpisodeStats(returns, lengths, time.time() - start)


def rollout_side_by_side(victim: Victim, attacker: Optional[Attacker], episodes: int, seed: int,
                         stochastic: bool = False, progress: Optional[str] = None,
                         on_step: Optional[Callable[[int, Any], None]] = None) -> EpisodeStats:
    """The episodes of `rollout`, one environment each (created in episode order, seeds seed + i), stepped together:
    the victim acts and the attacker perturbs on the batch of the running episodes' states, one call per step.
    A state's perturbation is the same search as alone (per-state objectives, restarts per state); the random
    draws are shared by the batch, so the returns are a function of (seed, episodes). Gradient attackers on small
    networks spend their time in per-call overhead, which the batch shares: about 10x faster at 20 episodes."""
    envs = [victim.make_env() for _ in range(episodes)]
    torch.manual_seed(seed)
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    if attacker is not None:
        attacker.reset()
    returns, lengths, running = [0.0] * episodes, [0] * episodes, list(range(episodes))
    limit = envs[0].spec.max_episode_steps if envs and envs[0].spec else None
    start, printed, step = time.time(), time.time(), 0
    while running:
        obs_n = torch.stack([victim.normalize(obs[i]) for i in running])
        if attacker is not None:
            obs_tilde = attacker(obs_n)
            check_in_ball(obs_n, obs_tilde, victim.eps, attacker.name)
            obs_n = obs_tilde
        actions = victim.act(obs_n, stochastic).cpu().numpy()
        still = []
        for i, action in zip(running, actions):
            obs[i], reward, terminated, truncated, _ = envs[i].step(action)
            if on_step is not None:
                on_step(i, envs[i])
            returns[i] += float(reward)
            lengths[i] += 1
            if not (terminated or truncated):
                still.append(i)
        running, step = still, step + 1
        now = time.time()
        if (progress or now - start > PROGRESS_AFTER_S) and (now - printed > PROGRESS_AFTER_S or not running):
            printed = now
            label = progress or (attacker.name if attacker is not None else "natural")
            eta = f", eta at most {(now - start) / step * (limit - step):.0f}s" if limit and running else ""
            print(f"  [{label}] step {step}{f'/{limit}' if limit else ''}: {episodes - len(running)}/{episodes} "
                  f"episodes done | {now - start:.0f}s{eta}", flush=True)
    for env in envs:
        env.close()
    return EpisodeStats(returns, lengths, time.time() - start)


def visited_states(victim: Victim, n: int, seed: int) -> torch.Tensor:
    """n normalized states the victim visits unattacked (its deterministic policy), consecutive from episodes seeded
    seed, seed + 1, ...: the states an attacker meets, for the benchmarks and tests that probe an attack on them."""
    env, states, episode = victim.make_env(), [], 0
    while len(states) < n:
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done and len(states) < n:
            obs_n = victim.normalize(obs)
            states.append(obs_n)
            obs, _, terminated, truncated, _ = env.step(victim.act(obs_n.unsqueeze(0))[0].cpu().numpy())
            done = terminated or truncated
        episode += 1
    env.close()
    return torch.stack(states)

# --- gradient helpers shared by PGD, MAD, PA-AD and Robust Sarsa ------------------------------------------
def uniform_in_ball(obs_n: torch.Tensor, radius: float) -> torch.Tensor:
    return obs_n + radius * (2 * torch.rand_like(obs_n) - 1)


def project(obs_tilde: torch.Tensor, obs_n: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.max(torch.min(obs_tilde, obs_n + eps), obs_n - eps)


PGDStart = Literal["step", "ball", "mixed"]
PGD_STARTS = get_args(PGDStart)


def pgd_minimize(objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], obs_n: torch.Tensor, eps: float,
                 steps: int, step_size: float, restarts: int = 1, start: str = "step",
                 final_step_size: Optional[float] = None) -> torch.Tensor:
    """Signed-gradient descent of objective(s, s~) (per sample, s the true states) projected onto the eps-ball
    around obs_n after every step, from a random start uniform in the step box s + U(-step, step) (the
    references' start: SA-PPO src/policy_gradients/agent.py apply_attack, "critic"; `start="ball"`: uniform in
    the whole ball; "mixed": restarts alternate between the two). `restarts` independent starts run as one batch (at batch size 1, as in an attack, they cost
    about one search) and each sample keeps its lowest objective. `final_step_size`: the step decays geometrically
    from step_size to it over the steps (None: constant)."""
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
    decay = 1.0 if final_step_size is None else (final_step_size / step_size) ** (1 / max(steps - 1, 1))
    for k in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(obs, x).sum(), x)
        x = project(x.detach() - step_size * decay ** k * grad.sign(), obs, eps)
    x = x.detach()
    if restarts == 1:
        return x
    with torch.no_grad():
        best = objective(obs, x).reshape(restarts, n).argmin(0)  # per sample, the restart with the lowest objective
    return x.reshape(restarts, n, *x.shape[1:])[best, torch.arange(n)]


# --- caches: trained attackers and fitted Sarsa critics, keyed by the victim they were made against -----------
def victim_identity(victim: Victim) -> dict:
    """What an attacker (or a Sarsa critic) trained against a victim is valid for: the checkpoint's content, not
    its path, so a study cloned to another machine or directory finds what it trained; its step; the radius."""
    digest = getattr(victim, "_content_sha1", None)
    if digest is None:
        with open(victim.ckpt_path, "rb") as f:
            digest = victim._content_sha1 = hashlib.sha1(f.read()).hexdigest()
    return {"victim_sha1": digest, "victim_step": victim.ckpt["global_step"], "eps": victim.eps}


def same_victim(record: Optional[dict], victim: Victim) -> bool:
    """The record was made against this victim. Records keyed by the victim's absolute path instead of its content
    (some committed study caches, e.g. results/halfcheetah_50k/attacks/attackers) match at that path."""
    if record is None:
        return False
    by_path = {"victim": os.path.abspath(victim.ckpt_path), "victim_step": victim.ckpt["global_step"], "eps": victim.eps}
    return record.get("identity") in (victim_identity(victim), by_path)


def read_record(path: str) -> Optional[dict]:
    """A cache record (a trained attacker's or a Sarsa critic's JSON); None when absent. Records are written
    atomically, so an unreadable one was damaged outside this code: it is reported and recomputed, not trusted."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"[cache] {path} is unreadable ({type(e).__name__}): recomputing it", flush=True)
        return None


def write_json_atomically(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def copy_atomically(src: str, dst: str) -> None:
    """A stop mid-copy leaves no half-written `dst`."""
    import shutil

    tmp = f"{dst}.tmp.{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def row_paths(row: dict) -> list[tuple[dict, str]]:
    """The (holder, key) of every file path a row records: learned attackers and the video."""
    holders = [(row["video"], "path")] if isinstance(row.get("video"), dict) and "path" in row["video"] else []
    for column in row.get("attacks", {}).values():
        holders += [(column, "attacker_path")] if "attacker_path" in column else []
        holders += [(c, "path") for c in column.get("per_config", []) if "path" in c]
    return holders


def work_tree_root(folder: str) -> Optional[str]:
    """The git work tree that holds `folder` (the nearest folder with a .git entry: a clone's or a worktree's), or
    None outside any."""
    folder = os.path.abspath(folder)
    while not os.path.exists(os.path.join(folder, ".git")):
        if os.path.dirname(folder) == folder:
            return None
        folder = os.path.dirname(folder)
    return folder


def paths_relative_to(row: dict, folder: str) -> dict:
    """An attack row as written: its file paths relative to its own folder, so a clone elsewhere finds them; a file
    outside the row's git work tree, which no clone carries, keeps its absolute path."""
    row = copy.deepcopy(row)
    root = work_tree_root(folder)
    root = root and os.path.realpath(root)  # a linked save dir is judged by where its files lie
    for holder, key in row_paths(row):
        path = os.path.abspath(holder[key])
        carried = root is None or os.path.commonpath([os.path.realpath(path), root]) == root
        holder[key] = os.path.relpath(path, folder) if carried else path
    return row


def paths_absolute_from(row: dict, folder: str) -> dict:
    """An attack row as read: relative file paths resolved from its folder (older rows hold absolute ones)."""
    for holder, key in row_paths(row):
        holder[key] = os.path.normpath(os.path.join(folder, holder[key]))
    return row


def copy_row(src: str, dst: str) -> dict:
    """An attack row copied to another path (atomically), its file paths re-based on the new folder; returns it."""
    row = paths_absolute_from(json.load(open(src)), os.path.dirname(os.path.abspath(src)))
    write_json_atomically(dst, paths_relative_to(row, os.path.dirname(os.path.abspath(dst))))
    return row


def kept_rows(path: Optional[str], settings: dict) -> list:
    """The rows a benchmark's --out JSON already holds: [] when there is none; one clear AttackError when it is
    unreadable, not a {settings, rows} file, or measured with other settings. Call it before the runs too."""
    if not path or not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise AttackError(f"{path} is not readable JSON ({e}); write another file")
    if not isinstance(old, dict) or not all(isinstance(r, dict) and "ckpt" in r for r in old.get("rows", [])):
        raise AttackError(f"{path} is not a file of benchmark rows (settings, rows with a ckpt); write another file")
    if old.get("settings") != settings:
        raise AttackError(f"{path} holds rows of other settings ({old.get('settings')}); write another file")
    return old.get("rows", [])


def write_rows(path: str, settings: dict, rows: list) -> None:
    """`rows` replace the file's rows of the same checkpoints; the others stay (read again now: another run may have
    added some while these ran)."""
    new = {r["ckpt"] for r in rows}
    kept = [r for r in kept_rows(path, settings) if r["ckpt"] not in new]
    write_json_atomically(path, {"settings": settings, "rows": kept + rows})


def writable_dir(path: str) -> str:
    """Creates `path` if needed and checks it takes files, before any attacker is trained into it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise AttackError(f"cannot create the save directory {path} ({e.strerror})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise AttackError(f"the save directory {path} is not writable")
    return path


def default_save_dir(victim: Victim) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(victim.ckpt_path)), "attackers")


# --- CLI plumbing: tyro dataclasses, one clear error line on bad input -------------------------------------------
@dataclass(kw_only=True)
class EpisodeArgs:
    episodes: int = 20  # evaluation episodes (paper: 20; older literature: 50)
    seed: int = 0  # seed of the evaluation episodes and of the attacker


@dataclass(kw_only=True)
class EvalArgs(EpisodeArgs):
    """The flags every attack reads."""

    eps: Optional[float] = None  # l_inf radius, normalized units (None: the checkpoint's); raw if no normalizer
    stochastic: bool = False  # victim samples actions instead of acting on its mean
    device: str = "cpu"
    env_id: Optional[str] = None  # a model trained elsewhere (SB3 zip, CleanRL file): its task, e.g. Hopper-v4
    env_kwargs: Optional[str] = None  # a model trained elsewhere: gym.make kwargs as JSON (Ant: from the obs size)
    vecnormalize: Optional[str] = None  # an SB3 model: the VecNormalize.save() statistics it was trained behind


def victim_from_args(path: str, args) -> Victim:
    """load_victim with the evaluation flags (EvalArgs)."""
    try:
        env_kwargs = None if args.env_kwargs is None else json.loads(args.env_kwargs)
    except ValueError as e:
        raise AttackError(f"--env-kwargs must be a JSON object, e.g. '{{\"use_contact_forces\": true}}' ({e})")
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise AttackError("--env-kwargs must be a JSON object")
    return load_victim(path, args.eps, args.device, args.env_id, env_kwargs, args.vecnormalize)


@dataclass(kw_only=True)
class SaveDirArgs:
    save_dir: Annotated[Optional[str], tyro.conf.arg(
        help="where trained attackers and fitted Sarsa critics go (None: attackers/ next to the checkpoint)")] = None


@dataclass(kw_only=True)
class NoArgs:
    """An attack without flags of its own."""


A = TypeVar("A")


def one_line(text: str) -> str:
    """tyro's error panel as one line: its title and message, without the box and the help text."""
    out = []
    for line in text.splitlines():
        line = line.strip().strip("│╭╮╰╯").strip().strip("─").strip()
        if line.startswith(("For full helptext", "Argument helptext")) or (out and not line):
            if len(out) > 1:
                break
            continue
        if line:
            out.append(line)
    return ": ".join([out[0], " ".join(out[1:])]) if len(out) > 1 else (out[0] if out else "bad command line")


def cli_description(doc: str) -> str:
    """A CLI's --help text: its module docstring's first paragraph and example commands (the rest documents the code
    and its references)."""
    examples = [line for line in doc.splitlines() if line.strip().startswith("python attacks/")]
    return doc.strip().split("\n\n")[0] + ("\n\n" + "\n".join(examples) if examples else "")


def parse(cls: type[A], doc: str, argv: Optional[list[str]] = None) -> A:
    """tyro.cli(cls), described by the module docstring `doc`; bad input becomes an AttackError (one line, exit 2
    under run_cli). --help prints as usual."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, description=cli_description(doc), args=argv)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise AttackError(one_line(captured.getvalue()))


def run_cli(main: Callable[[], None]) -> None:
    try:
        main()
    except AttackError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def standalone(doc: str, flags: type, evaluate: Callable, name: Callable) -> None:
    """The `python attacks/<attacker>.py --ckpt ...` entry point: parse (the shared evaluation flags and the
    attack's own `flags`), load the victim, evaluate, report."""

    @dataclass(kw_only=True)
    class Args(flags, EvalArgs):
        ckpt: str  # checkpoint written by any method script, an SB3 .zip or a CleanRL file (attacks/README.md)

    def main() -> None:
        args = parse(Args, doc)
        if args.episodes <= 0:
            raise AttackError("--episodes must be positive")
        victim = victim_from_args(args.ckpt, args)
        reason = unavailable(name(args), victim)
        if reason:
            raise AttackError(f"{name(args)} against {args.ckpt}: {reason}")
        for flag, note in adapt(name(args), victim, args).items():
            print(f"[{name(args)}] --{flag.replace('_', '-')} {note}", flush=True)
        report(name(args), evaluate(victim, args)["stats"])

    run_cli(main)


def report(name: str, stats: EpisodeStats) -> None:
    print(f"{name}: {stats.mean:.1f} ± {stats.std:.1f} over {len(stats.returns)} episodes ({stats.seconds:.1f}s)",
          flush=True)


# --- slim checkpoints (what an attacker needs, for committing trained agents) ----------------------------
# Everything an attack or an evaluation reads; optimizers, target critics, RNG states and the simulator state
# (what only --resume needs) are dropped. Adversaries stay: the own-adversary column reads them.
SLIM_KEYS = ("checkpoint_format", "method", "env_id", "env_kwargs", "obs_dim", "act_dim", "action_low", "action_high",
             "arch", "actor", "critic", "log_alpha", "normalizer", "eps", "global_step", "args", "summary", "adversary",
             "adversary_trained")


def slim_checkpoint(src: str, dst: str) -> dict:
    """Writes the attack-relevant part of checkpoint `src` to `dst` (atomically); returns it."""
    ckpt = load_checkpoint(src)
    slim = {k: ckpt[k] for k in SLIM_KEYS if k in ckpt}
    slim["slim"] = True  # marks a file that cannot --resume
    atomic_save(slim, dst)
    return slim
