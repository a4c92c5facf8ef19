"""The learned attackers' shared flow (SA-RL, PA-AD; SAC or PPO): their flags, the search presets over attacker
configurations, and training (or finding already trained), saving and evaluating each one against a frozen victim;
the strongest (lowest victim return) is the column's value. attacks/search.py runs the same grid as Ray tasks.

Presets (`--search`):
- quick (CPU-sized): SAC attackers, `--seeds` seeds (default 1); PPO attackers, 2 configurations (lr 3e-4 / clip
  0.2 and lr 1e-3 / clip 0.4, value lr 1e-4, no entropy, initial std 0.5); budget `--attack-budget` (default 50k).
- paper: SAC attackers, 4 seeds (the paper's), at the victim's own training budget; PPO attackers, the ATLA
  reference scan (huanzhang12/ATLA_robust_RL configs/attack_ppo_*_scan.py: anneal_lr {on, off} x clip {0.2, 0.4}
  x entropy {0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3} x lr {3e-4, 1e-3, 3e-3} x value lr {1e-5, 3e-5, 1e-4}, initial std
  0.5: 216 configurations), plus for PA-AD the tuned setting of its README (lr 3e-5, value lr 3e-5, clip 0.4, no
  entropy); 1M steps each (Ant: SA-RL 5M, PA-AD 10M), SPEC §7.

Every trained attacker is written to <save dir>/<ckpt stem>_<config id>.pt with a .json next to it (settings,
budget, victim returns on the evaluation episodes); a finished configuration is skipped on a re-run, so a search
resumes. An attacker in training saves its whole training state every 10k steps as <same name>.partial.pt (a SAC
attacker's with its replay buffer; .gitignore keeps them out of git), and a re-run continues it exactly where it was.
Where that file is missing (a fresh clone) and <same name>.progress.pt is present (rl.portable_progress: committed at
a stop, without the replay buffer), the training continues from it, with a SAC attacker's buffer refilled from empty
(its record lists the steps under "replay_buffer_refilled_at"); of the two, the later one is continued.
attacks/search.py's Ray tasks keep their states in its --storage instead, and take a committed one with them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import time
from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Optional

import torch
from tyro.conf import arg

from attacks.common import (AttackError, EpisodeStats, Progress, Victim, copy_atomically, default_save_dir,
                            read_record, rollout, same_victim, victim_identity, writable_dir, write_json_atomically)
from attacks.contract import TOTAL_TIMESTEPS, task_name
from attacks.rl import (REFILLED_AT, AttackEnv, PolicyAttacker, PPOSettings, load_attacker, policy_action_fn,
                        save_attacker, train_ppo, train_sac)

PRESETS = ("quick", "paper")
Preset = Literal["quick", "paper"]
QUICK_BUDGET = 50_000
PAPER_PPO_BUDGET = {"Ant": {"sa_rl": 5_000_000, "pa_ad": 10_000_000}}  # others: 1M (SPEC §7)
COLUMNS = {"sa_rl_sac": ("sa_rl", "sac"), "pa_ad_sac": ("pa_ad", "sac"), "sa_rl_ppo": ("sa_rl", "ppo"),
           "pa_ad_ppo": ("pa_ad", "ppo")}


@dataclass(kw_only=True)
class LearnedArgs:
    """The flags of a learned attacker (SA-RL, PA-AD) and of the search over them."""

    algo: Literal["sac", "ppo"] = "sac"  # RL algorithm of the attacker
    search: Annotated[Preset, arg(help="attacker search: quick (CPU-sized: few configurations, short budget) or "
                                       "paper (the reference-sized grid and budgets: a cluster job)")] = "quick"
    attack_budget: Annotated[Optional[int], arg(
        help="environment steps per attacker (None: the preset's: quick 50k; paper 1M PPO (Ant: SA-RL 5M, PA-AD "
             "10M), SAC the victim's own budget)")] = None
    seeds: Optional[int] = None  # SAC attackers' seeds (None: quick 1, paper 4)
    attacker_hidden: Optional[tuple[int, ...]] = None  # hidden sizes (None: 256 256 for SAC, 64 64 for PPO)
    learning_starts: int = 5000  # SAC attacker: random steps before updates
    ppo_steps: int = 2048  # PPO attacker: rollout length per iteration
    load: Optional[str] = None  # evaluate this saved attacker instead of searching


# PPO settings outside the searched knobs, with their tags in an attacker's id: two attackers that differ in one
# never share a file.
FIXED_PPO_KNOBS = {"epochs": "ep", "minibatches": "mb", "gamma": "g", "lam": "lam", "value_clip": "vc",
                   "reward_clip": "rc"}


@dataclass(frozen=True)
class AttackerConfig:
    kind: str  # sa_rl | pa_ad
    algo: str  # sac | ppo
    budget: int
    seed: int
    hidden: tuple = ()
    ppo: Optional[PPOSettings] = None  # a PPO attacker's settings (None: PPOSettings' defaults); SAC: None
    learning_starts: int = 5000  # SAC attacker: random steps before updates

    def __post_init__(self):
        if self.algo == "ppo" and self.ppo is None:
            object.__setattr__(self, "ppo", PPOSettings())

    def fixed_ppo_knobs(self) -> dict:
        """The PPO settings no search varies, where they differ from PPOSettings' defaults (the references')."""
        if self.ppo is None:
            return {}
        default = PPOSettings()
        return {k: getattr(self.ppo, k) for k in FIXED_PPO_KNOBS if getattr(self.ppo, k) != getattr(default, k)}

    def as_record(self) -> dict:
        """The configuration as records, saved attackers and resume keys hold it: flat, with the seven PPO knobs (a
        SAC attacker's at their defaults), the form they had before PPOSettings was nested here, so older training
        states still resume; the other PPO settings only where they differ from their defaults."""
        ppo = self.ppo or PPOSettings()
        return {"kind": self.kind, "algo": self.algo, "budget": self.budget, "seed": self.seed, "hidden": self.hidden,
                **{k: getattr(ppo, k) for k in ("lr", "value_lr", "clip", "ent_coef", "anneal_lr", "initial_std",
                                                "n_steps")}, "learning_starts": self.learning_starts,
                **self.fixed_ppo_knobs()}

    @property
    def id(self) -> str:
        """The attacker's file name (its saved copies are found by it): the knobs a search varies."""
        hidden = "x".join(str(h) for h in self.hidden)
        if self.algo == "sac":
            return f"{self.kind}_sac_h{hidden}_ls{self.learning_starts}_b{self.budget}_s{self.seed}"
        p = self.ppo
        fixed = "".join(f"_{FIXED_PPO_KNOBS[k]}{v:g}" for k, v in self.fixed_ppo_knobs().items())  # "" at defaults
        return (f"{self.kind}_ppo_lr{p.lr:g}_vlr{p.value_lr:g}_clip{p.clip:g}_ent{p.ent_coef:g}"
                f"_anneal{int(p.anneal_lr)}_std{p.initial_std:g}_h{hidden}_n{p.n_steps}{fixed}_b{self.budget}"
                f"_s{self.seed}")


def preset_configs(kind: str, algo: str, preset: str, env_id: str, budget: Optional[int] = None,
                   seeds: Optional[int] = None, hidden: Optional[tuple] = None, n_steps: int = 2048,
                   learning_starts: int = 5000, base_seed: int = 0) -> list[AttackerConfig]:
    if preset not in PRESETS:
        raise AttackError(f"--search must be one of {PRESETS}, got {preset!r}")
    task = task_name(env_id)
    hidden = tuple(hidden or ((256, 256) if algo == "sac" else (64, 64)))
    if algo == "sac":
        if budget is None:
            budget = QUICK_BUDGET if preset == "quick" else TOTAL_TIMESTEPS.get(task, 1_000_000)
        n = seeds if seeds is not None else (1 if preset == "quick" else 4)
        return [AttackerConfig(kind, "sac", budget, base_seed + 1000 * (k + 1), hidden,
                               learning_starts=min(learning_starts, budget // 2)) for k in range(n)]
    if budget is None:
        budget = QUICK_BUDGET if preset == "quick" else PAPER_PPO_BUDGET.get(task, {}).get(kind, 1_000_000)
    common = dict(kind=kind, algo="ppo", budget=budget, seed=base_seed + 1000, hidden=hidden)
    if preset == "quick":
        grid = [dict(lr=3e-4, clip=0.2), dict(lr=1e-3, clip=0.4)]
    else:
        grid = [dict(anneal_lr=anneal, clip=clip, ent_coef=ent, lr=lr, value_lr=vlr)
                for anneal, clip, ent, lr, vlr in itertools.product(
                    (True, False), (0.2, 0.4), (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3), (3e-4, 1e-3, 3e-3),
                    (1e-5, 3e-5, 1e-4))]
        if kind == "pa_ad":  # umd-huang-lab/paad_adv_rl code_mujoco/readme.md: the tuned PA-AD setting
            grid.append(dict(lr=3e-5, value_lr=3e-5, clip=0.4, ent_coef=0.0))
    return [AttackerConfig(**common, ppo=PPOSettings(n_steps=n_steps, **g)) for g in grid]


def realize_tag(kind: str, pa_steps: int, pa_restarts: int, pa_step_scale: float = 1.0,
                pa_final_step_scale: float = 1.0) -> str:
    """The realisation's settings, part of an attacker's identity (a PA-AD director trained with one PGD is not
    the same attacker with another); a constant step of eps/steps (scales 1) keeps the name it always had."""
    if kind != "pa_ad":
        return ""
    steps = "" if pa_step_scale == pa_final_step_scale == 1 else f"s{pa_step_scale:g}-{pa_final_step_scale:g}"
    return f"_pa{pa_steps}x{pa_restarts}{steps}"


def attacker_path(victim: Victim, config: AttackerConfig, save_dir: str, tag: str = "") -> str:
    """Where an attacker is saved (its record: the same name, .json)."""
    stem = os.path.splitext(os.path.basename(victim.ckpt_path))[0]
    return os.path.join(save_dir, f"{stem}_{config.id}_eps{victim.eps:g}{tag}.pt")


def finished_record(victim: Victim, config: AttackerConfig, save_dir: str, episodes: int, eval_seed: int,
                    stochastic: bool = False, tag: str = "") -> Optional[dict]:
    """The record of this attacker trained against this victim and evaluated on these episodes, if saved; its path
    where it lies now (a record carries the path it was trained at, perhaps in another clone)."""
    path = attacker_path(victim, config, save_dir, tag)
    record = read_record(path[:-3] + ".json")
    evaluation = {"episodes": episodes, "seed": eval_seed, "stochastic": stochastic}
    return {**record, "path": path} if same_victim(record, victim) and record.get("evaluation") == evaluation else None


def saved_step(path: str) -> int:
    """The step a training state was saved at; -1 when there is none (or none readable: load_progress says why)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # missing or damaged: the other copy, or the start
        return -1


def train_one(victim: Victim, config: AttackerConfig, realize: Callable, action_dim: int, save_dir: str,
              episodes: int, eval_seed: int, stochastic: bool = False, log: bool = True, tag: str = "") -> dict:
    """Trains (or finds already trained) one attacker, evaluates it on the evaluation episodes, returns its record.
    An attacker found on disk is reused only if it was trained against this very victim (common.victim_identity)
    and radius; `tag` names the realisation settings (realize_tag)."""
    path = attacker_path(victim, config, save_dir, tag)
    record_path = path[:-3] + ".json"
    identity = victim_identity(victim)
    evaluation = {"episodes": episodes, "seed": eval_seed, "stochastic": stochastic}
    record = read_record(record_path)
    known_victim = same_victim(record, victim)
    if known_victim and record.get("evaluation") == evaluation:
        for state in (".partial.pt", ".progress.pt"):  # left by a stop between the record and its removal below
            with contextlib.suppress(FileNotFoundError):
                os.remove(path[:-3] + state)
        return {**record, "path": path}  # where it lies now, not where it was trained
    name = f"{config.kind}_{config.algo}"
    start = time.time()
    policy, train_seconds, notes = None, 0.0, {}
    if known_victim and os.path.isfile(path):  # trained earlier against this victim, evaluated on other episodes
        try:
            policy, _ = load_attacker(path, victim, config.kind)
            notes = {REFILLED_AT: record[REFILLED_AT]} if REFILLED_AT in record else {}  # how it was trained
        except AttackError as e:  # damaged outside this code (saves are atomic): one attacker retrained, not a stop
            print(f"[cache] {e}: retraining it", flush=True)
    if policy is None:
        env = AttackEnv(victim, action_dim, realize, name)
        label = f"{name} {config.id}" if log else None
        # a stopped training continues from here (every rl.SAVE_EVERY steps); .gitignore'd
        resume = {"progress_path": path[:-3] + ".partial.pt",
                  "progress_key": {"identity": identity, "config": config.as_record(), "tag": tag}}
        portable = path[:-3] + ".progress.pt"
        if saved_step(portable) > saved_step(resume["progress_path"]):  # a fresh clone, or a newer commit than ours
            copy_atomically(portable, resume["progress_path"])
        if config.algo == "sac":
            policy = train_sac(env, config.budget, config.seed, config.hidden, config.learning_starts, log=label,
                               notes=notes, **resume)
        else:
            policy = train_ppo(env, config.budget, config.seed, config.hidden, config.ppo, log=label, **resume)
        policy.eval()
        save_attacker(path, policy, {"kind": config.kind, "algo": config.algo, "obs_dim": victim.obs_dim,
                                     "act_dim": action_dim, "hidden": list(config.hidden), "eps": victim.eps,
                                     "victim": os.path.abspath(victim.ckpt_path), "budget": config.budget,
                                     "seed": config.seed, "config": config.as_record()})
        train_seconds = time.time() - start
    stats = rollout(victim, PolicyAttacker(name, policy_action_fn(policy), realize), episodes, eval_seed, stochastic)
    record = {"config": config.as_record(), "id": config.id, "path": path, "identity": identity,
              "evaluation": evaluation,
              "returns": stats.returns, "lengths": stats.lengths, "mean": stats.mean, "std": stats.std,
              "train_seconds": round(train_seconds, 1), "eval_seconds": round(stats.seconds, 1), **notes}
    write_json_atomically(record_path, record)
    for state in (".partial.pt", ".progress.pt"):  # kept until the record is written: a cut evaluation retrains < 10k steps
        with contextlib.suppress(FileNotFoundError):
            os.remove(path[:-3] + state)
    if log:
        print(f"  [{name} {config.id}] victim return {stats.mean:.1f} ± {stats.std:.1f} (saved {path})", flush=True)
    return record


def summarize(records: list[dict], preset: str, configs: list[AttackerConfig]) -> dict:
    best = min(records, key=lambda r: r["mean"])
    return {"stats": EpisodeStats(best["returns"], best["lengths"], best["eval_seconds"]), "attacker_path": best["path"],
            "per_config": [{"id": r["id"], "mean": r["mean"], "std": r["std"], "path": r["path"],
                            **({REFILLED_AT: r[REFILLED_AT]} if REFILLED_AT in r else {})} for r in records],
            "search": {"preset": preset, "configurations": len(configs), "budget": configs[0].budget,
                       "winner": best["config"]}}


def run_search(victim: Victim, args, kind: str, action_dim: int, realize: Callable) -> dict:
    """In this process, one configuration after another (finished ones are read back, not retrained)."""
    configs = preset_configs(kind, args.algo, args.search, victim.env_id, args.attack_budget, args.seeds,
                             args.attacker_hidden, args.ppo_steps, args.learning_starts, args.seed)
    if any(c.budget <= 0 for c in configs) or not configs:
        raise AttackError("--attack-budget and --seeds must be positive")
    save_dir = writable_dir(args.save_dir or default_save_dir(victim))
    tag = realize_tag(kind, args.pa_steps, args.pa_restarts, args.pa_step_scale,
                      args.pa_final_step_scale) if kind == "pa_ad" else ""
    records, progress = [], Progress(len(configs))
    for done, config in enumerate(configs, 1):
        records.append(train_one(victim, config, realize, action_dim, save_dir, args.episodes, args.seed,
                                 args.stochastic, tag=tag))
        print(f"  [{kind}_{args.algo}] {done}/{len(configs)} attackers | strongest so far "
              f"{min(r['mean'] for r in records):.1f} | {progress(done)}", flush=True)
    return summarize(records, args.search, configs)


def run_learned_attack(victim: Victim, args, kind: str, action_dim: int,
                       realize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict:
    """An attack's evaluate(): the saved attacker `--load` names, or the strongest of the preset's search."""
    name = f"{kind}_{args.algo}"
    if args.load:
        policy, _ = load_attacker(args.load, victim, kind)
        attacker = PolicyAttacker(name, policy_action_fn(policy), realize)
        return {"stats": rollout(victim, attacker, args.episodes, args.seed, args.stochastic), "attacker_path": args.load}
    return run_search(victim, args, kind, action_dim, realize)
