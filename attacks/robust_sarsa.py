"""Robust Sarsa (RS) attack (Zhang et al. 2020): learn Q^pi of the FROZEN victim by Sarsa on its own rollouts, with
a robustness regulariser on Q, then attack with PGD on that critic; the worst setting of the grid is reported.

Reference: SA-PPO src/policy_gradients/agent.py sarsa_steps, apply_attack "sarsa"/"sarsa+action"; the grid of
src/scan_attacks.sh.

- Data: consecutive (s, a, r, s', a') tuples of the victim's own episodes, a' the action actually taken at s'
  (the reference paired each sample with the next one of a shuffled minibatch; SPEC §7). Exploration: by
  default the victim SAMPLES its actions (`--rs-explore stochastic`), as the reference's Sarsa rollouts use the
  stochastic policy; `deterministic` uses its mean action only. A time-limit truncation keeps bootstrapping.
- Loss: Huber TD error against a Polyak target critic, plus the reference's regulariser
  sarsa_reg * E[max(ub - Q, Q - lb)^2], where [lb, ub] bounds Q over the l_inf ball of radius sarsa_eps around
  the (normalized state, action) input, by interval bound propagation (the reference used auto_LiRPA's IBP/CROWN
  mix; IBP is its beta = 1 end). The radius ramps 0 -> sarsa_eps over the middle third of training and the
  learning rate decays linearly to 0 over the last third, as the reference schedules.
- Attack: PGD (minQ) on the learned critic (same defaults as pgd.py: 10 steps of eps/10 from the step box, 5
  batched restarts), and RS+MAD ("sarsa+action"): PGD on (1 - r) * Q(s, mu(s~)) - r * mean(((m(s~) - m(s)) /
  (sigma / mean sigma))^2), r = --rs-mad-ratio (reference 0.5).
- PPO-kind victims, Q's action input (`--rs-action`): "mean" is the reference's (Sarsa on the UNCLIPPED sampled
  actions, the attack through the unclipped Gaussian mean, policy_model(states)[0] in apply_attack: the mean keeps
  its gradient in the dimensions the clip to the action box saturates); "executed" trains on and attacks through
  the clipped action the environment receives (no gradient in a saturated dimension, but nothing wasted pushing
  a mean further out of the box); "both" (default) fits a critic of each per setting on the same data and keeps
  the worst. SAC-kind victims have one input (the tanh action: nothing is clipped), and the flag does not apply.
- Resumable: each fitted critic is saved with the victim returns it produced (`<save dir>/<ckpt stem>_rs_...pt` and
  .json, save dir as the learned attackers': `--save-dir`, default `attackers/` next to the checkpoint). A re-run
  with the same victim, Sarsa settings and evaluation reads the returns back; a re-run with other evaluation
  settings re-evaluates the saved critic. Every fit and rollout is seeded, so a suite cut short and resumed gives
  the numbers an uncut one would.
- Grid (`--rs-grid`): "paper" = sarsa_eps {0.02, 0.05, 0.1, 0.15, 0.2, 0.3} x sarsa_reg {0.1, 0.3, 1, 3, 10} (30
  critics, both objectives each; twice that on PPO victims with --rs-action both); "quick" = sarsa_eps
  {0.05, 0.15} x sarsa_reg {0.3, 3}; or explicit `--rs-settings EPS:REG ...`.

    python attacks/robust_sarsa.py --ckpt runs/<run>/model.pt --rs-grid quick
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks.common import (AttackError, EpisodeStats, Progress, SaveDirArgs, Victim, default_save_dir, read_record,  # noqa: E402
                            rollout, same_victim, standalone, victim_identity, writable_dir, write_json_atomically)
from attacks.nets import TwinCritic  # noqa: E402
from attacks.pgd import Args as PGDArgs  # noqa: E402
from attacks.pgd import PGDAttacker  # noqa: E402

NAME, COLUMN = "rs", "RS"
# Reference budget (SA-PPO test.py: 30 Sarsa steps of 2048 transitions, 10 epochs x 32 minibatches each).
REFERENCE_STEPS, REFERENCE_UPDATES, REFERENCE_BATCH = 30 * 2048, 30 * 10 * 32, 64
GRIDS = {"paper": [(e, r) for e in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3) for r in (0.1, 0.3, 1.0, 3.0, 10.0)],
         "quick": [(e, r) for e in (0.05, 0.15) for r in (0.3, 3.0)]}


def unclipped_action(victim: Victim, obs_n: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """The victim's action before any clip to the action box: PPO kinds, the Gaussian sample (or mean); SAC kinds,
    the executed tanh action itself."""
    if victim.kind != "ppo":
        return victim.act(obs_n, stochastic)
    with torch.no_grad():
        return victim.actor.sample(obs_n)[0] if stochastic else victim.actor.mean(obs_n)


def collect_transitions(victim: Victim, steps: int, seed: int, explore: str = "stochastic") -> dict:
    """The victim's own rollouts as consecutive (s, a, r, s', a', terminated) tuples; a' is the action it takes (or,
    after a truncation, would take) at s'. "actions" are what the environment executed; "raw_actions" the same
    before the clip to the action box (PPO kinds; identical for SAC kinds)."""
    env = victim.make_env()
    stochastic = explore == "stochastic"
    torch.manual_seed(seed)
    clip = victim.actor.clip if victim.kind == "ppo" else (lambda a: a)
    obs_l, raw_l, rew_l, next_l, next_raw_l, term_l = [], [], [], [], [], []
    obs, _ = env.reset(seed=seed)
    obs_n = victim.normalize(obs)
    raw = unclipped_action(victim, obs_n.unsqueeze(0), stochastic)[0]
    for _ in range(steps):
        raw_next, reward, terminated, truncated, _ = env.step(clip(raw).cpu().numpy())
        next_n = victim.normalize(raw_next)
        next_raw = unclipped_action(victim, next_n.unsqueeze(0), stochastic)[0]
        obs_l.append(obs_n), raw_l.append(raw), rew_l.append(float(reward))
        next_l.append(next_n), next_raw_l.append(next_raw), term_l.append(float(terminated))
        if terminated or truncated:
            obs, _ = env.reset()
            obs_n = victim.normalize(obs)
            raw = unclipped_action(victim, obs_n.unsqueeze(0), stochastic)[0]
        else:
            obs_n, raw = next_n, next_raw
    env.close()
    dev = victim.device
    raw_actions, raw_next_actions = torch.stack(raw_l), torch.stack(next_raw_l)
    return {"obs": torch.stack(obs_l), "actions": clip(raw_actions), "raw_actions": raw_actions,
            "rewards": torch.tensor(rew_l, device=dev), "next_obs": torch.stack(next_l),
            "next_actions": clip(raw_next_actions), "raw_next_actions": raw_next_actions,
            "terminated": torch.tensor(term_l, device=dev)}


def interval_bounds(q: TwinCritic, obs: torch.Tensor, actions: torch.Tensor, eps: float):
    """Interval bounds [lb, ub] ([2, batch] each) of both critics over the l_inf ball of radius eps around the
    concatenated (s, a) input: center/radius propagation through the Linear and ReLU layers."""
    center = torch.cat([obs, actions], -1).unsqueeze(0).expand(2, -1, -1)
    radius = torch.full_like(center, eps)
    last = len(q.weights) - 1
    for i, (w, b) in enumerate(zip(q.weights, q.biases)):
        center, radius = torch.baddbmm(b, center, w), torch.bmm(radius, w.abs())
        if i < last:
            lower, upper = F.relu(center - radius), F.relu(center + radius)
            center, radius = (upper + lower) / 2, (upper - lower) / 2
    return (center - radius).squeeze(-1), (center + radius).squeeze(-1)


def fit_sarsa(data: dict, obs_dim: int, act_dim: int, updates: int, sarsa_eps: float, sarsa_reg: float, seed: int,
              hidden=(256, 256), gamma: float = 0.99, lr: float = 3e-4, batch_size: int = REFERENCE_BATCH,
              tau: float = 0.005, device=torch.device("cpu"), log: str | None = None,
              raw_actions: bool = False) -> TwinCritic:
    """Sarsa policy evaluation of the fixed victim, Q(s,a) <- r + gamma (1 - term) Q'(s', a'), with the robustness
    regulariser and the reference's schedules (radius ramp over the middle third, lr decay over the last third).
    raw_actions: a and a' before the clip to the action box (the reference's input for PPO victims)."""
    act_key, next_act_key = ("raw_actions", "raw_next_actions") if raw_actions else ("actions", "next_actions")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    q = TwinCritic(obs_dim, act_dim, list(hidden)).to(device)
    q_target = TwinCritic(obs_dim, act_dim, list(hidden)).to(device)
    q_target.load_state_dict(q.state_dict())
    q_target.requires_grad_(False)
    optimizer = torch.optim.Adam(q.parameters(), lr=lr)
    third = max(updates // 3, 1)
    n, progress = len(data["rewards"]), Progress(updates)
    for update in range(1, updates + 1):
        ramp = min(max((update - third) / third, 0.0), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, max(updates - update, 0) / third)
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen).to(device)
        obs, act = data["obs"][idx], data[act_key][idx]
        with torch.no_grad():
            target = data["rewards"][idx] + gamma * (1 - data["terminated"][idx]) * \
                q_target(data["next_obs"][idx], data[next_act_key][idx])
        value = q(obs, act)
        loss = F.smooth_l1_loss(value, target.expand_as(value))
        if sarsa_reg > 0 and sarsa_eps * ramp > 0:
            lower, upper = interval_bounds(q, obs, act, sarsa_eps * ramp)
            loss = loss + sarsa_reg * torch.maximum(upper - value, value - lower).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(q_target.parameters()), list(q.parameters()), tau)
        if log and update % max(updates // 5, 1) == 0:
            print(f"  [{log}] update {update}/{updates} | loss {loss.item():.3f} | {progress(update)}", flush=True)
    if not all(bool(torch.isfinite(p).all()) for p in q.parameters()):  # a NaN critic would be a silently weak attack
        raise AttackError(f"Sarsa critic diverged (sarsa_eps {sarsa_eps}, sarsa_reg {sarsa_reg}): non-finite weights")
    q.requires_grad_(False)
    return q.eval()


class SarsaMADAttacker(PGDAttacker):
    """RS+MAD (the reference's "sarsa+action"): PGD on (1 - r) Q_RS(s, mu(s~)) - r * mean(((m(s~) - m(s)) / s_n)^2),
    s_n the victim's std at s divided by its mean, m its pre-tanh mean."""

    name = "rs_mad"

    def __init__(self, victim: Victim, critic, ratio: float = 0.5, **kwargs):
        super().__init__(victim, critic=critic, **kwargs)
        self.ratio = ratio

    def objective(self, obs: torch.Tensor, obs_tilde: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean, log_std = self.victim.actor(obs)
            std = log_std.exp()
            std = std / std.mean(-1, keepdim=True)
        change = ((self.victim.actor(obs_tilde)[0] - mean) / std).pow(2).mean(-1)
        return (1 - self.ratio) * super().objective(obs, obs_tilde) - self.ratio * change


def parse_settings(args) -> list[tuple[float, float]]:
    if args.rs_settings:
        out = []
        for s in args.rs_settings:
            try:
                sarsa_eps, sarsa_reg = (float(v) for v in s.split(":"))
            except ValueError:
                raise AttackError(f"--rs-settings expects SARSA_EPS:SARSA_REG pairs, got {s!r}")
            if sarsa_eps < 0 or sarsa_reg < 0:
                raise AttackError(f"--rs-settings values must be >= 0, got {s!r}")
            out.append((sarsa_eps, sarsa_reg))
        return out
    return GRIDS[args.rs_grid]


@dataclass(kw_only=True)
class Args:
    rs_grid: Literal["paper", "quick"] = "paper"  # Sarsa (eps, reg) grid: paper (30 critics) or quick (4)
    rs_settings: Optional[tuple[str, ...]] = None  # explicit SARSA_EPS:SARSA_REG pairs (override the grid)
    rs_steps: int = REFERENCE_STEPS  # victim environment steps of Sarsa data
    rs_updates: int = REFERENCE_UPDATES  # Sarsa gradient steps per setting
    rs_explore: Literal["stochastic", "deterministic"] = "stochastic"  # victim actions collecting Sarsa data
    rs_action: Annotated[Literal["both", "mean", "executed"], tyro.conf.arg(
        help="PPO-kind victims: Q's action input, the unclipped mean or the executed (clipped) action; both = a "
             "critic of each, the worst kept (SAC victims: one input)")] = "both"
    rs_mad_ratio: float = 0.5  # RS+MAD weight of the action change (0: RS only); SA-PPO attack_sarsa_action_ratio 0.5
    rs_hidden: tuple[int, ...] = (256, 256)  # hidden sizes of the Sarsa critic


@dataclass(kw_only=True)
class StandaloneArgs(Args, PGDArgs, SaveDirArgs):
    """Robust Sarsa's flags with the PGD that attacks through its critic."""


def action_inputs(victim: Victim, args) -> list[str]:
    """Q's action inputs to fit and attack through: PPO kinds per --rs-action, SAC kinds their executed action."""
    if victim.kind != "ppo":
        return ["executed"]
    return ["mean", "executed"] if args.rs_action == "both" else [args.rs_action]


def settings_record(victim: Victim, args, settings) -> dict:
    return {"grid": "explicit" if args.rs_settings else args.rs_grid, "settings": [list(s) for s in settings],
            "data_steps": args.rs_steps, "updates": args.rs_updates, "explore": args.rs_explore,
            "action_inputs": action_inputs(victim, args), "mad_ratio": args.rs_mad_ratio, "hidden": list(args.rs_hidden),
            "pgd_steps": args.pgd_steps, "pgd_step_scale": args.pgd_step_scale, "pgd_restarts": args.pgd_restarts,
            "pgd_start": args.pgd_start}


def cache_dir(victim: Victim, args) -> str:
    return args.save_dir or default_save_dir(victim)


def cache_paths(victim: Victim, args, fit: dict) -> tuple[str, str]:
    """(critic .pt, record .json) of one fitted critic: named by its grid cell and input, and a digest of every
    setting that defines the fit (a different --rs-steps is a different critic, never a cache hit)."""
    save_dir = cache_dir(victim, args)
    stem = os.path.splitext(os.path.basename(victim.ckpt_path))[0]
    digest = hashlib.sha1(json.dumps(fit, sort_keys=True).encode()).hexdigest()[:8]
    base = os.path.join(save_dir, f"{stem}_rs_e{fit['sarsa_eps']:g}_r{fit['sarsa_reg']:g}_{fit['action_input']}_"
                                  f"eps{victim.eps:g}_{digest}")
    return base + ".pt", base + ".json"


def write_atomically(path: str, save) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    save(tmp)
    os.replace(tmp, path)


def load_critic(path: str, victim: Victim, hidden) -> Optional[TwinCritic]:
    """A saved Sarsa critic; None (reported) when the file was damaged outside this code (saves are atomic)."""
    q = TwinCritic(victim.obs_dim, victim.act_dim, list(hidden))
    try:
        q.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # unpickling and state-dict errors have no common type
        print(f"[cache] {path} is unreadable ({type(e).__name__}): refitting it", flush=True)
        return None
    q.requires_grad_(False)
    return q.to(victim.device).eval()


def fit_settings(args, sarsa_eps: float, sarsa_reg: float, action_input: str) -> dict:
    """What identifies a fitted critic (its cache key, with the victim)."""
    return {"sarsa_eps": sarsa_eps, "sarsa_reg": sarsa_reg, "action_input": action_input, "data_steps": args.rs_steps,
            "data_seed": args.seed + 7, "explore": args.rs_explore, "updates": args.rs_updates, "fit_seed": args.seed,
            "hidden": list(args.rs_hidden)}


def sarsa_attacker(victim: Victim, args, q, objective: str, mean_input: bool) -> PGDAttacker:
    settings = dict(steps=args.pgd_steps, step_scale=args.pgd_step_scale, restarts=args.pgd_restarts,
                    start=args.pgd_start, through_mean=mean_input)
    if objective == "rs":
        return PGDAttacker(victim, critic=q, **settings)
    return SarsaMADAttacker(victim, q, args.rs_mad_ratio, **settings)


class Replay:
    """The column's strongest attack alone (its saved critic, its objective), as an attack module: what
    attacks/video.py records, the same episodes as the column's."""

    SIDE_BY_SIDE = True

    def __init__(self, victim: Victim, args, strongest: dict):
        fit = fit_settings(args, strongest["sarsa_eps"], strongest["sarsa_reg"], strongest["action_input"])
        critic_path, _ = cache_paths(victim, args, fit)
        q = load_critic(critic_path, victim, args.rs_hidden)
        if q is None:
            raise AttackError(f"the strongest Sarsa critic is not in {critic_path}")
        self.attacker = sarsa_attacker(victim, args, q, strongest["objective"], strongest["action_input"] == "mean")

    def evaluate(self, victim: Victim, args) -> dict:
        return {"stats": rollout(victim, self.attacker, args.episodes, args.seed, args.stochastic)}


def evaluate(victim: Victim, args) -> dict:
    settings = parse_settings(args)
    if args.rs_steps <= 0 or args.rs_updates <= 0:
        raise AttackError("--rs-steps and --rs-updates must be positive")
    if not 0 <= args.rs_mad_ratio <= 1:
        raise AttackError(f"--rs-mad-ratio must lie in [0, 1], got {args.rs_mad_ratio}")
    writable_dir(cache_dir(victim, args))  # before a critic is fitted, not after
    identity = victim_identity(victim)
    start = args.pgd_start
    evaluation = {"episodes": args.episodes, "seed": args.seed, "stochastic": bool(args.stochastic),
                  "pgd_steps": args.pgd_steps, "pgd_step_scale": args.pgd_step_scale, "pgd_restarts": args.pgd_restarts,
                  "pgd_start": start,
                  "mad_ratio": args.rs_mad_ratio, "episodes_run": "side by side"}  # (common.rollout_side_by_side)
    data, best, per_setting = None, None, []
    critics = [(e, r, i) for e, r in settings for i in action_inputs(victim, args)]
    progress = Progress(len(critics))
    for done, (sarsa_eps, sarsa_reg, action_input) in enumerate(critics, 1):
        mean_input = action_input == "mean"
        label = f"{sarsa_eps}:{sarsa_reg}" + (f" {action_input}" if victim.kind == "ppo" else "")
        fit = fit_settings(args, sarsa_eps, sarsa_reg, action_input)
        critic_path, record_path = cache_paths(victim, args, fit)
        record = read_record(record_path)
        same_fit = same_victim(record, victim) and record.get("fit") == fit
        if same_fit and record.get("evaluation") == evaluation:
            print(f"  [rs {label}] found in {record_path}", flush=True)
            results, cached = record["results"], True
        else:
            q = None
            if same_fit and os.path.isfile(critic_path):  # fitted earlier, evaluated with other settings
                q = load_critic(critic_path, victim, args.rs_hidden)
            if q is None:
                if data is None:  # only when some critic must be fitted: a fully cached grid skips it
                    data = collect_transitions(victim, args.rs_steps, args.seed + 7, args.rs_explore)
                q = fit_sarsa(data, victim.obs_dim, victim.act_dim, args.rs_updates, sarsa_eps, sarsa_reg,
                              args.seed, tuple(args.rs_hidden), device=victim.device, log=f"rs {label}",
                              raw_actions=mean_input)
                write_atomically(critic_path, lambda tmp: torch.save(
                    {k: v.cpu() for k, v in q.state_dict().items()}, tmp))
            objectives = ["rs"] + (["rs_mad"] if args.rs_mad_ratio > 0 else [])
            attackers = [(objective, sarsa_attacker(victim, args, q, objective, mean_input)) for objective in objectives]
            results, cached = [], False
            for objective, attacker in attackers:
                stats = rollout(victim, attacker, args.episodes, args.seed, args.stochastic)
                results.append({"objective": objective, "returns": stats.returns, "lengths": stats.lengths,
                                "seconds": round(stats.seconds, 2)})
            record = {"identity": identity, "fit": fit, "evaluation": evaluation, "critic": critic_path,
                      "results": results}
            write_json_atomically(record_path, record)
        for result in results:
            stats = EpisodeStats(result["returns"], result["lengths"], result["seconds"])
            print(f"  [{result['objective']} {label}] victim return {stats.mean:.1f} ± {stats.std:.1f}"
                  f"{' (saved earlier)' if cached else ''}", flush=True)
            per_setting.append({"sarsa_eps": sarsa_eps, "sarsa_reg": sarsa_reg, "action_input": action_input,
                                "objective": result["objective"], "mean": stats.mean, "std": stats.std,
                                "cached": cached})
            if best is None or stats.mean < best[0].mean:
                best = (stats, per_setting[-1])
        print(f"  [rs] {done}/{len(critics)} critics | strongest so far {best[0].mean:.1f} | {progress(done)}",
              flush=True)
    return {"stats": best[0], "per_setting": per_setting, "strongest": best[1],
            "search": settings_record(victim, args, settings)}


if __name__ == "__main__":
    standalone(__doc__, StandaloneArgs, evaluate, lambda args: NAME)
