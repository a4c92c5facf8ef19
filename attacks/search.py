"""The learned-attacker search of attacks/learned.py as Ray tasks: every configuration of a preset, for every
learned column, trained in parallel (embedded local Ray by default, `--address` for a cluster, as sweep.py); each
trained attacker is saved with its record, so `eval_all.py` with the same preset then finds them all and only
reports.

    python attacks/search.py --ckpt runs/x/model.pt --search quick --attack-budget 30000 --local-cpus 2
    python attacks/search.py --ckpt runs/x/model.pt --search paper --address auto --num-cpus 1
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Optional

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks import pa_ad, sa_rl  # noqa: E402
from attacks.common import (AttackError, EpisodeArgs, SaveDirArgs, default_save_dir, load_victim, parse,  # noqa: E402
                            run_cli, writable_dir)
from attacks.learned import (COLUMNS, AttackerConfig, LearnedArgs, preset_configs, realize_tag,  # noqa: E402
                             summarize, train_one)


@dataclass(kw_only=True)
class Args(pa_ad.PAArgs, LearnedArgs, SaveDirArgs, EpisodeArgs):
    ckpt: str  # checkpoint written by any method script
    columns: Annotated[str, tyro.conf.arg(help=f"comma list of {', '.join(COLUMNS)}")] = ",".join(COLUMNS)
    address: Optional[str] = None  # Ray cluster address ('auto' to join a running cluster)
    num_cpus: float = 1  # CPUs per attacker training
    local_cpus: Optional[int] = None  # CPUs of the embedded local Ray (None: all)
    max_retries: int = 2


def make_realize(victim, kind: str, pa_steps: int = pa_ad.STEPS, pa_restarts: int = pa_ad.RESTARTS,
                 pa_step_scale: float = pa_ad.STEP_SCALE, pa_final_step_scale: float = pa_ad.FINAL_STEP_SCALE):
    if kind == "sa_rl":
        return victim.obs_dim, sa_rl.realizer(victim)
    return victim.act_dim, pa_ad.realizer(victim, pa_steps, pa_restarts, step_scale=pa_step_scale,
                                          final_step_scale=pa_final_step_scale)


def remote_train(ckpt: str, config: AttackerConfig, save_dir: str, episodes: int, eval_seed: int, pa_steps: int,
                 pa_restarts: int, pa_step_scale: float, pa_final_step_scale: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    victim = load_victim(ckpt)
    action_dim, realize = make_realize(victim, config.kind, pa_steps, pa_restarts, pa_step_scale, pa_final_step_scale)
    return train_one(victim, config, realize, action_dim, save_dir, episodes, eval_seed, log=False,
                     tag=realize_tag(config.kind, pa_steps, pa_restarts, pa_step_scale, pa_final_step_scale))


def main(argv=None) -> None:
    a = parse(Args, __doc__, argv)
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

    import ray  # only this CLI needs it

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
    pending = {task.remote(ckpt, cfg, save_dir, a.episodes, a.seed, a.pa_steps, a.pa_restarts, a.pa_step_scale,
                           a.pa_final_step_scale, threads): (col, cfg)
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
