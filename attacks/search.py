"""The learned-attacker search: SA-RL and PA-AD attackers (SAC or PPO) trained over a grid of configurations
against one frozen victim, each saved and evaluated; the strongest (lowest victim return) is the column's value.

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
resumes. This CLI runs the grid as Ray tasks (embedded local Ray by default, `--address` for a cluster, as
sweep.py); `eval_all.py` with the same preset then finds every attacker trained and only reports.

    python attacks/search.py --ckpt runs/x/model.pt --search quick --attack-budget 30000 --local-cpus 2
    python attacks/search.py --ckpt runs/x/model.pt --search paper --address auto --num-cpus 1
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sac  # noqa: E402
from attacks.common import (AttackError, EpisodeStats, Victim, load_victim, read_record, rollout,  # noqa: E402
                            run_cli, writable_dir)

PRESETS = ("quick", "paper")
QUICK_BUDGET = 50_000
PAPER_PPO_BUDGET = {"Ant": {"sa_rl": 5_000_000, "pa_ad": 10_000_000}}  # others: 1M (SPEC §7)
COLUMNS = {"sa_rl_sac": ("sa_rl", "sac"), "pa_ad_sac": ("pa_ad", "sac"), "sa_rl_ppo": ("sa_rl", "ppo"),
           "pa_ad_ppo": ("pa_ad", "ppo")}


@dataclass(frozen=True)
class AttackerConfig:
    kind: str  # sa_rl | pa_ad
    algo: str  # sac | ppo
    budget: int
    seed: int
    hidden: tuple = ()
    lr: float = 3e-4
    value_lr: float = 1e-4
    clip: float = 0.2
    ent_coef: float = 0.0
    anneal_lr: bool = False
    initial_std: float = 0.5
    n_steps: int = 2048
    learning_starts: int = 5000

    @property
    def id(self) -> str:
        hidden = "x".join(str(h) for h in self.hidden)
        if self.algo == "sac":
            return f"{self.kind}_sac_h{hidden}_ls{self.learning_starts}_b{self.budget}_s{self.seed}"
        return (f"{self.kind}_ppo_lr{self.lr:g}_vlr{self.value_lr:g}_clip{self.clip:g}_ent{self.ent_coef:g}"
                f"_anneal{int(self.anneal_lr)}_std{self.initial_std:g}_h{hidden}_n{self.n_steps}_b{self.budget}"
                f"_s{self.seed}")


def preset_configs(kind: str, algo: str, preset: str, env_id: str, budget: Optional[int] = None,
                   seeds: Optional[int] = None, hidden: Optional[tuple] = None, n_steps: int = 2048,
                   learning_starts: int = 5000, base_seed: int = 0) -> list[AttackerConfig]:
    if preset not in PRESETS:
        raise AttackError(f"--search must be one of {PRESETS}, got {preset!r}")
    task = sac.task_name(env_id)
    hidden = tuple(hidden or ((256, 256) if algo == "sac" else (64, 64)))
    if algo == "sac":
        if budget is None:
            budget = QUICK_BUDGET if preset == "quick" else sac.TOTAL_TIMESTEPS.get(task, 1_000_000)
        n = seeds if seeds is not None else (1 if preset == "quick" else 4)
        return [AttackerConfig(kind, "sac", budget, base_seed + 1000 * (k + 1), hidden,
                               learning_starts=min(learning_starts, budget // 2)) for k in range(n)]
    if budget is None:
        budget = QUICK_BUDGET if preset == "quick" else PAPER_PPO_BUDGET.get(task, {}).get(kind, 1_000_000)
    common = dict(kind=kind, algo="ppo", budget=budget, seed=base_seed + 1000, hidden=hidden, n_steps=n_steps)
    if preset == "quick":
        grid = [dict(lr=3e-4, clip=0.2), dict(lr=1e-3, clip=0.4)]
    else:
        grid = [dict(anneal_lr=anneal, clip=clip, ent_coef=ent, lr=lr, value_lr=vlr)
                for anneal, clip, ent, lr, vlr in itertools.product(
                    (True, False), (0.2, 0.4), (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3), (3e-4, 1e-3, 3e-3),
                    (1e-5, 3e-5, 1e-4))]
        if kind == "pa_ad":  # umd-huang-lab/paad_adv_rl code_mujoco/readme.md: the tuned PA-AD setting
            grid.append(dict(lr=3e-5, value_lr=3e-5, clip=0.4, ent_coef=0.0))
    return [AttackerConfig(**common, **g) for g in grid]


def make_realize(victim: Victim, kind: str, pa_steps: int = 10, pa_restarts: int = 5):
    from attacks import pa_ad, sa_rl

    if kind == "sa_rl":
        return victim.obs_dim, sa_rl.realizer(victim)
    return victim.act_dim, pa_ad.realizer(victim, pa_steps, pa_restarts)


def realize_tag(kind: str, pa_steps: int, pa_restarts: int) -> str:
    """The realisation's settings, part of an attacker's identity (a PA-AD director trained with one PGD is not
    the same attacker with another)."""
    return f"_pa{pa_steps}x{pa_restarts}" if kind == "pa_ad" else ""


def victim_identity(victim: Victim) -> dict:
    """What an attacker (or a Sarsa critic) trained against a victim is valid for: the checkpoint's content, not
    its path, so a study cloned to another machine or directory finds what it trained; its step; the radius."""
    digest = getattr(victim, "_content_sha1", None)
    if digest is None:
        with open(victim.ckpt_path, "rb") as f:
            digest = victim._content_sha1 = hashlib.sha1(f.read()).hexdigest()
    return {"victim_sha1": digest, "victim_step": victim.ckpt["global_step"], "eps": victim.eps}


def same_victim(record: Optional[dict], victim: Victim) -> bool:
    """The record was made against this victim (records written before the content hash name its absolute path)."""
    if record is None:
        return False
    legacy = {"victim": os.path.abspath(victim.ckpt_path), "victim_step": victim.ckpt["global_step"], "eps": victim.eps}
    return record.get("identity") in (victim_identity(victim), legacy)


def train_one(victim: Victim, config: AttackerConfig, realize: Callable, action_dim: int, save_dir: str,
              episodes: int, eval_seed: int, stochastic: bool = False, log: bool = True, tag: str = "") -> dict:
    """Trains (or finds already trained) one attacker, evaluates it on the evaluation episodes, returns its record.
    An attacker found on disk is reused only if it was trained against this very victim file (path, step) and
    radius; `tag` names the realisation settings (realize_tag)."""
    from attacks.rl import (AttackEnv, PolicyAttacker, PPOSettings, load_attacker, policy_action_fn, save_attacker,
                            train_ppo, train_sac)

    stem = os.path.splitext(os.path.basename(victim.ckpt_path))[0]
    path = os.path.join(save_dir, f"{stem}_{config.id}_eps{victim.eps:g}{tag}.pt")
    record_path = path[:-3] + ".json"
    identity = victim_identity(victim)
    evaluation = {"episodes": episodes, "seed": eval_seed, "stochastic": stochastic}
    record = read_record(record_path)
    known_victim = same_victim(record, victim)
    if known_victim and record.get("evaluation") == evaluation:
        return record
    name = f"{config.kind}_{config.algo}"
    start = time.time()
    policy, train_seconds = None, 0.0
    if known_victim and os.path.isfile(path):  # trained earlier against this victim, evaluated on other episodes
        try:
            policy, _ = load_attacker(path, victim, config.kind)
        except AttackError as e:  # damaged outside this code (saves are atomic): one attacker retrained, not a stop
            print(f"[cache] {e}: retraining it", flush=True)
    if policy is None:
        env = AttackEnv(victim, action_dim, realize, name)
        label = f"{name} {config.id}" if log else None
        if config.algo == "sac":
            policy = train_sac(env, config.budget, config.seed, config.hidden, config.learning_starts, log=label)
        else:
            settings = PPOSettings(lr=config.lr, value_lr=config.value_lr, clip=config.clip, ent_coef=config.ent_coef,
                                   anneal_lr=config.anneal_lr, initial_std=config.initial_std, n_steps=config.n_steps)
            policy = train_ppo(env, config.budget, config.seed, config.hidden, settings, log=label)
        policy.eval()
        save_attacker(path, policy, {"kind": config.kind, "algo": config.algo, "obs_dim": victim.obs_dim,
                                     "act_dim": action_dim, "hidden": list(config.hidden), "eps": victim.eps,
                                     "victim": os.path.abspath(victim.ckpt_path), "budget": config.budget,
                                     "seed": config.seed, "config": dataclasses.asdict(config)})
        train_seconds = time.time() - start
    stats = rollout(victim, PolicyAttacker(name, policy_action_fn(policy), realize), episodes, eval_seed, stochastic)
    record = {"config": dataclasses.asdict(config), "id": config.id, "path": path, "identity": identity,
              "evaluation": evaluation,
              "returns": stats.returns, "lengths": stats.lengths, "mean": stats.mean, "std": stats.std,
              "train_seconds": round(train_seconds, 1), "eval_seconds": round(stats.seconds, 1)}
    os.makedirs(save_dir, exist_ok=True)
    tmp = f"{record_path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, record_path)
    if log:
        print(f"  [{name} {config.id}] victim return {stats.mean:.1f} ± {stats.std:.1f} (saved {path})", flush=True)
    return record


def default_save_dir(victim: Victim) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(victim.ckpt_path)), "attackers")


def summarize(records: list[dict], preset: str, configs: list[AttackerConfig]) -> dict:
    best = min(records, key=lambda r: r["mean"])
    return {"stats": EpisodeStats(best["returns"], best["lengths"], best["eval_seconds"]), "attacker_path": best["path"],
            "per_config": [{"id": r["id"], "mean": r["mean"], "std": r["std"], "path": r["path"]} for r in records],
            "search": {"preset": preset, "configurations": len(configs), "budget": configs[0].budget,
                       "winner": best["config"]}}


def run_search(victim: Victim, args, kind: str, action_dim: int, realize: Callable) -> dict:
    """In this process, one configuration after another (finished ones are read back, not retrained)."""
    configs = preset_configs(kind, args.algo, args.search, victim.env_id, args.attack_budget, args.seeds,
                             args.attacker_hidden, args.ppo_steps, args.learning_starts, args.seed)
    if any(c.budget <= 0 for c in configs) or not configs:
        raise AttackError("--attack-budget and --seeds must be positive")
    save_dir = writable_dir(args.save_dir or default_save_dir(victim))
    tag = realize_tag(kind, getattr(args, "pa_steps", 10), getattr(args, "pa_restarts", 5))
    records = [train_one(victim, c, realize, action_dim, save_dir, args.episodes, args.seed, args.stochastic, tag=tag)
               for c in configs]
    return summarize(records, args.search, configs)


# --- the CLI: the grid as Ray tasks ----------------------------------------------------------------------
def remote_train(ckpt: str, config: AttackerConfig, save_dir: str, episodes: int, eval_seed: int, pa_steps: int,
                 pa_restarts: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    victim = load_victim(ckpt)
    action_dim, realize = make_realize(victim, config.kind, pa_steps, pa_restarts)
    return train_one(victim, config, realize, action_dim, save_dir, episodes, eval_seed, log=False,
                     tag=realize_tag(config.kind, pa_steps, pa_restarts))


def main(argv=None) -> None:
    from attacks.rl import add_learned_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--columns", default=",".join(COLUMNS), help=f"comma list of {', '.join(COLUMNS)}")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes (and the attackers' base seed)")
    p.add_argument("--pa-steps", type=int, default=10)
    p.add_argument("--pa-restarts", type=int, default=5)
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' to join a running cluster)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per attacker training")
    p.add_argument("--local-cpus", type=int, default=None, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--max-retries", type=int, default=2)
    add_learned_args(p)
    a = p.parse_args(argv)
    columns = [c.strip() for c in a.columns.split(",") if c.strip()]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or not columns:
        raise AttackError(f"unknown column(s) {unknown or a.columns!r}; choose from {', '.join(COLUMNS)}")
    if a.episodes <= 0:
        raise AttackError("--episodes must be positive")
    victim = load_victim(a.ckpt)
    save_dir = writable_dir(a.save_dir or default_save_dir(victim))
    grid = {col: preset_configs(*COLUMNS[col], a.search, victim.env_id, a.attack_budget, a.seeds, a.attacker_hidden,
                                a.ppo_steps, a.learning_starts, a.seed) for col in columns}
    total = sum(len(v) for v in grid.values())
    print(f"[search] {a.search} preset: {total} attackers for {a.ckpt} "
          + ", ".join(f"{c} {len(v)}" for c, v in grid.items()), flush=True)

    import ray

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    threads = max(1, int(a.num_cpus))
    if a.address:
        ray.init(address=a.address, runtime_env={"working_dir": root, "excludes": ["runs", "sweeps", ".git", "results"]})
    else:
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=a.local_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": root, "OMP_NUM_THREADS": str(threads)}})
    task = ray.remote(num_cpus=a.num_cpus, max_retries=a.max_retries)(remote_train)
    ckpt = os.path.abspath(a.ckpt)
    pending = {task.remote(ckpt, cfg, save_dir, a.episodes, a.seed, a.pa_steps, a.pa_restarts, threads): (col, cfg)
               for col, cfgs in grid.items() for cfg in cfgs}
    records: dict = {col: [] for col in columns}
    start = time.time()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        col, cfg = pending.pop(ready[0])
        record = ray.get(ready[0])
        records[col].append(record)
        done = total - len(pending)
        print(f"[search] {done}/{total} {cfg.id}: victim return {record['mean']:.1f} | {time.time() - start:.0f}s",
              flush=True)
    ray.shutdown()
    print(f"\n| column | configurations | budget | strongest | its configuration |\n|---|---|---|---|---|")
    for col in columns:
        s = summarize(records[col], a.search, grid[col])
        print(f"| {col} | {len(grid[col])} | {grid[col][0].budget} | {s['stats'].mean:.1f} ± {s['stats'].std:.1f} | "
              f"{os.path.basename(s['attacker_path'])} |")


if __name__ == "__main__":
    run_cli(main)
