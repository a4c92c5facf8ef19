"""The learned-attacker search of attacks/learned.py as Ray tasks: every configuration of a preset, for every
learned column, trained in parallel (embedded local Ray by default, `--address` for a cluster, as sweep.py); each
trained attacker is saved with its record, so `eval_all.py` with the same preset then finds them all and only
reports. An attacker in training sends its saved state (every 10k steps) to --storage within seconds of each save,
so a task killed on one node continues on another from there (--storage is needed with --address; without it the
save dir itself holds the state, as for eval_all.py). A state a stop committed into the save dir (<name>.progress.pt,
see attacks/learned.py) goes with its task, which continues it unless the storage holds a later one.

    python attacks/search.py --ckpt runs/x/model.pt --search quick --attack-budget 30000 --local-cpus 2
    python attacks/search.py --ckpt runs/x/model.pt --search paper --address auto --num-cpus 1 --storage s3://b/progress
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Annotated, Optional

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from attacks import pa_ad, sa_rl  # noqa: E402
from attacks.common import (AttackError, EvalArgs, Progress, SaveDirArgs, default_save_dir, load_victim,  # noqa: E402
                            parse, read_record, run_cli, same_victim, victim_from_args, victim_identity, writable_dir,
                            write_json_atomically)
from attacks.learned import (COLUMNS, AttackerConfig, LearnedArgs, attacker_path, finished_record,  # noqa: E402
                             preset_configs, realize_tag, summarize, train_one)


@dataclass(kw_only=True)
class Args(pa_ad.PAArgs, LearnedArgs, SaveDirArgs, EvalArgs):
    ckpt: str  # checkpoint written by any method script, or an SB3 zip / CleanRL file (with --env-id)
    columns: Annotated[str, tyro.conf.arg(help=f"comma list of {', '.join(COLUMNS)}")] = ",".join(COLUMNS)
    address: Optional[str] = None  # Ray cluster address ('auto' to join a running cluster)
    # where attackers in training keep their saved state, under <victim sha1[:12]>/: a path every node reaches or a
    # pyarrow.fs URI (s3://, gs://); needed with --address; default: the save dir itself
    storage: Optional[str] = None
    num_cpus: float = 1  # CPUs per attacker training
    local_cpus: Optional[int] = None  # CPUs of the embedded local Ray (None: all)
    max_retries: int = 2


def make_realize(victim, kind: str, pa_steps: int = pa_ad.STEPS, pa_restarts: int = pa_ad.RESTARTS,
                 pa_step_scale: float = pa_ad.STEP_SCALE, pa_final_step_scale: float = pa_ad.FINAL_STEP_SCALE):
    if kind == "sa_rl":
        return victim.obs_dim, sa_rl.realizer(victim)
    return victim.act_dim, pa_ad.realizer(victim, pa_steps, pa_restarts, step_scale=pa_step_scale,
                                          final_step_scale=pa_final_step_scale)


def remote_train(victim_files: dict, spec: dict, earlier: dict, config: AttackerConfig, episodes: int,
                 eval_seed: int, stochastic: bool, pa_steps: int, pa_restarts: int, pa_step_scale: float,
                 pa_final_step_scale: float, threads: int, storage_uri: str, folder: str) -> tuple[dict, dict]:
    """One attacker, on any node: the victim comes as bytes (`victim_files`: its checkpoint and, for an SB3 model,
    its VecNormalize statistics; `spec`: how to load them) with the attacker's earlier files, if any, and the
    attacker's files go back as bytes, so a worker never needs a path of the driver's filesystem. Its training
    state goes to `folder` of the storage (sweep.Storage) as it is saved and comes from there when an earlier try
    left one."""
    from sweep import FolderSender, Storage

    torch.set_num_threads(threads)
    store = Storage(storage_uri)
    with tempfile.TemporaryDirectory() as tmp:
        save_dir = os.path.join(tmp, "attackers")
        os.makedirs(save_dir)
        files = [(os.path.join(tmp, n), c) for n, c in victim_files.items()]
        for name, content in files + [(os.path.join(save_dir, n), c) for n, c in earlier.items()]:
            with open(name, "wb") as f:
                f.write(content)
        stats = os.path.join(tmp, spec["vecnormalize"]) if spec["vecnormalize"] else None
        victim = load_victim(os.path.join(tmp, spec["ckpt"]), spec["eps"], "cpu", spec["env_id"], spec["env_kwargs"],
                             stats)
        action_dim, realize = make_realize(victim, config.kind, pa_steps, pa_restarts, pa_step_scale,
                                           pa_final_step_scale)
        tag = realize_tag(config.kind, pa_steps, pa_restarts, pa_step_scale, pa_final_step_scale)
        progress = progress_name(victim, config, tag)
        got = store.get(f"{folder}/{progress}" if folder else progress, os.path.join(save_dir, progress))
        with FolderSender(store, save_dir, folder, known=got, match=lambda p: p.endswith(".partial.pt")):
            record = train_one(victim, config, realize, action_dim, save_dir, episodes, eval_seed, stochastic,
                               log=False, tag=tag)
        files = {}
        for name in [n for n in os.listdir(save_dir) if not n.endswith(".partial.pt")]:  # the storage keeps those
            with open(os.path.join(save_dir, name), "rb") as f:
                files[name] = f.read()
    return record, files


def earlier_files(victim, config: AttackerConfig, save_dir: str, tag: str) -> dict:
    """What the driver's save dir holds of this attacker, for its task: the attacker trained earlier against this
    victim with its record (the task evaluates it again), or else the training state a stop committed there
    (<name>.progress.pt, rl.portable_progress), which the task continues where the storage holds no later one."""
    path = attacker_path(victim, config, save_dir, tag)
    record = read_record(path[:-3] + ".json")
    if same_victim(record, victim) and os.path.isfile(path):
        with open(path, "rb") as f:  # the record as the worker knows the victim: by content (older records name a
            earlier = {os.path.basename(path): f.read()}  # driver path)
        earlier[os.path.basename(path)[:-3] + ".json"] = json.dumps({**record, "identity": victim_identity(victim)}
                                                                    ).encode()
        return earlier
    portable = path[:-3] + ".progress.pt"
    if os.path.isfile(portable):
        with open(portable, "rb") as f:
            return {os.path.basename(portable): f.read()}
    return {}


def progress_name(victim, config: AttackerConfig, tag: str) -> str:
    """The file name of the attacker's saved training state (train_one's), in the storage as in a save dir."""
    return os.path.basename(attacker_path(victim, config, "", tag))[:-3] + ".partial.pt"


def land(record: dict, files: dict, save_dir: str) -> dict:
    """A worker's attacker and record written into the driver's save_dir (atomically), the record's path its own."""
    record = {**record, "path": os.path.join(save_dir, os.path.basename(record["path"]))}
    for name, content in sorted(files.items(), key=lambda kv: kv[0].endswith(".json")):  # the record last
        if name.endswith(".json"):
            write_json_atomically(os.path.join(save_dir, name), {**json.loads(content), "path": record["path"]})
            continue
        with open(os.path.join(save_dir, name + ".tmp"), "wb") as f:
            f.write(content)
        os.replace(os.path.join(save_dir, name + ".tmp"), os.path.join(save_dir, name))
    return record


def main(argv=None) -> None:
    a = parse(Args, __doc__, argv)
    columns = [c.strip() for c in a.columns.split(",") if c.strip()]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or not columns:
        raise AttackError(f"unknown column(s) {unknown or a.columns!r}; choose from {', '.join(COLUMNS)}")
    if a.episodes <= 0:
        raise AttackError("--episodes must be positive")
    if a.address and not a.storage:
        raise AttackError("--address: give --storage, a path every node reaches or a URI (s3://, gs://), where "
                          "attackers in training keep their saved state")
    victim = victim_from_args(a.ckpt, a)
    save_dir = writable_dir(a.save_dir or default_save_dir(victim))
    import sweep  # its Storage, as a sweep's

    problem = sweep.storage_problem(a.storage) if a.storage else None
    if problem:
        raise AttackError(problem)
    store = sweep.Storage(a.storage or save_dir)
    # a shared storage serves many victims, also of one file name (runs/a/model.pt, runs/b/model.pt)
    folder = victim_identity(victim)["victim_sha1"][:12] if a.storage else ""
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
    spec = {"ckpt": os.path.basename(a.ckpt), "eps": a.eps, "env_id": a.env_id,
            "env_kwargs": json.loads(a.env_kwargs) if a.env_kwargs else None,
            "vecnormalize": "vecnormalize_" + os.path.basename(a.vecnormalize) if a.vecnormalize else None}
    victim_files = {}
    for name, path in [(spec["ckpt"], a.ckpt), (spec["vecnormalize"], a.vecnormalize)]:
        if name:
            with open(path, "rb") as f:
                victim_files[name] = f.read()
    victim_ref = ray.put(victim_files)  # once into the object store, for every task on every node
    records: dict = {col: [] for col in columns}
    pending = {}
    for col, cfgs in grid.items():
        tag = realize_tag(COLUMNS[col][0], a.pa_steps, a.pa_restarts, a.pa_step_scale, a.pa_final_step_scale)
        for cfg in cfgs:
            record = finished_record(victim, cfg, save_dir, a.episodes, a.seed, a.stochastic, tag=tag)
            if record is not None:  # trained and evaluated earlier: nothing to send
                records[col].append(record)
                continue
            pending[task.remote(victim_ref, spec, earlier_files(victim, cfg, save_dir, tag), cfg, a.episodes, a.seed,
                                a.stochastic, a.pa_steps,
                                a.pa_restarts, a.pa_step_scale, a.pa_final_step_scale, threads,
                                store.uri, folder)] = (col, cfg, tag)
    progress = Progress(len(pending))
    if total > len(pending):
        print(f"[search] {total - len(pending)} of {total} attackers found in {save_dir}", flush=True)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        col, cfg, tag = pending.pop(ready[0])
        record = land(*ray.get(ready[0]), save_dir)
        progress_file = f"{folder}/{progress_name(victim, cfg, tag)}" if folder else progress_name(victim, cfg, tag)
        try:
            store.remove(progress_file)  # landed: its training state is done with
        except Exception as e:  # the attacker is safe; a stale state costs storage, not results
            print(f"[search] could not remove {store.uri}/{progress_file} ({type(e).__name__}); delete it by hand",
                  flush=True)
        with contextlib.suppress(FileNotFoundError):  # the committed state it continued from, if any
            os.remove(attacker_path(victim, cfg, save_dir, tag)[:-3] + ".progress.pt")
        records[col].append(record)
        done = progress.total - len(pending)
        print(f"[search] {done}/{progress.total} {cfg.id}: victim return {record['mean']:.1f} | {progress(done)}",
              flush=True)
    ray.shutdown()
    print(f"\n| column | configurations | budget | strongest | its configuration |\n|---|---|---|---|---|")
    for col in columns:
        s = summarize(records[col], a.search, grid[col])
        print(f"| {col} | {len(grid[col])} | {grid[col][0].budget} | {s['stats'].mean:.1f} ± {s['stats'].std:.1f} | "
              f"{os.path.basename(s['attacker_path'])} |")


if __name__ == "__main__":
    run_cli(main)
