"""Reproduce the paper's Table 1 protocol on Ray: a grid of method x env x seed training runs, then the
attack evaluation of each method/env's median seed (by final clean evaluation return), then the tables
and figures (results.py).

    python sweep.py --envs HalfCheetah-v4 --seeds 2 --budget-scale 0.02            # a laptop mini-grid
    python sweep.py --address auto --storage s3://bucket/studies --seeds 8 --num-gpus 0.25   # paper scale on a cluster

Fault tolerance: each trial checkpoints every --save-every-frac of its budget (with its replay buffer);
a trial whose worker dies is retried by Ray (--max-retries) and resumes from its last checkpoint. Running
the same command again skips finished trials and finished attack evaluations.

On a cluster (--address), --storage (a shared path or a pyarrow.fs URI, as Ray Train's storage_path) is where
trials and attacks write: checkpoints go there as they are made, so a retry on any node resumes from the last
one, and the driver copies every finished piece into --out (docs/sweeps.md, "On a cluster").

Every seed is also attacked with the cheap attacks (`--seed-attacks`, default natural,uniform,mad,pgd) on its
slim checkpoint, so the worst case has a spread over seeds, not only the median seed's value.

Layout of --out: trials/<method>__<env>__s<seed>/{model.pt, model_buffer.pt, done.json, attempts.jsonl,
train.log, runs/ (tensorboard)}; models/<trial>.pt (slim: actor, critics, normalizer, adversary; what an attacker
needs) with models/<trial>_attacks.{json,md} (the per-seed attacks); attacks/<method>__<env>.json (the median
seed's full suite, attacked on attacks/<trial>.pt); sweep.json (the grid and its settings).

A study meant to survive the machine: `--git-commit` commits each finished piece as it lands (a trial's
done-marker, log, tensorboard events and slim model; each attack JSON), never replay buffers, so a later run on a
fresh clone skips everything finished. A running PPO-family trial's resume checkpoint (small) is committed every
--commit-progress-min minutes and at a stop; a running SAC-family trial's checkpoint without its buffer is committed
as trials/<trial>/resume.pt at a stop, and a clone resumes from it with an empty buffer (recorded in attempts.jsonl).
`--state-dir` keeps SAC-family full checkpoints and buffers outside the work tree; `--slim-every` (and `--slim-at`)
keep slim models over training in models/checkpoints/.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import sys
import threading
import time
from typing import Optional

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# A SAC-family trial's resume checkpoint without its buffer, committed when the sweep stops (see commit_progress)
RESUME_FILE = "resume.pt"
METHODS = ["sac", "robust_sac", "sac_valt_eps", "sac_valt_soft"]
# The PPO-family rows (--methods ppo robust_ppo atla_ppo wocar_ppo): on-policy, no replay buffer; budgets of the paper's Table 1
# PPO rows in AGENT steps (atla_ppo's adversary takes as many again: the paper's 10M, Ant 20M, in all). PA-ATLA-PPO:
# atla_ppo with --train-args '{"pa": true}' into its own --out.
_PPO_5M = {"HalfCheetah": 5_000_000, "Hopper": 5_000_000, "Walker2d": 5_000_000, "Ant": 10_000_000}
PPO_BUDGETS = {"ppo": _PPO_5M, "robust_ppo": _PPO_5M, "atla_ppo": _PPO_5M,
               "wocar_ppo": {"HalfCheetah": 2_000_000, "Hopper": 2_000_000, "Walker2d": 2_000_000, "Ant": 10_000_000}}
PPO_METHODS = set(PPO_BUDGETS)
ENVS = ["HalfCheetah-v4", "Hopper-v4", "Walker2d-v4", "Ant-v4"]
# the per-task step schedules (flags of each script's TASK_DEFAULTS), scaled with the budget
SCHEDULES = {
    "robust_sac": ("reg_eps_start_step", "reg_eps_end_step"),
    "sac_valt_eps": ("reg_eps_start_step", "reg_eps_end_step", "worst_rate_remain_steps"),
    "sac_valt_soft": ("reg_eps_start_step", "reg_eps_end_step"),
    "sac_ppo": ("reg_eps_start_step", "reg_eps_end_step", "adv_iterations"),
}


def trial_name(method: str, env_id: str, seed: int) -> str:
    return f"{method}__{env_id}__s{seed}"


def checkpoint_path(out: str, name: str, state_dir: Optional[str] = None) -> str:
    """Where a trial writes its full checkpoint: a SAC-family trial's (with its replay buffer beside it) in
    --state-dir when one is given (outside the work tree), every other one in its trial folder."""
    if state_dir and name.split("__")[0] not in PPO_METHODS:
        return os.path.join(state_dir, os.path.basename(out), name, "model.pt")
    return os.path.join(out, "trials", name, "model.pt")


def trial_overrides(method: str, env_id: str, seed: int, scale: float, out: str, save_every_frac: float,
                    extra: dict, threads: int = 1, state_dir: Optional[str] = None) -> dict:
    """The Args of one trial: the paper's budget and schedules times `scale`."""
    import sac

    mod = importlib.import_module(method)
    task = sac.task_name(env_id)
    name = trial_name(method, env_id, seed)
    if method in PPO_METHODS:  # whole 2048-step rollouts; checkpoints fall between rollouts (exact resume, no buffer)
        rollout = mod.Args().num_steps
        steps = max(1, int(round(PPO_BUDGETS[method][task] * scale / rollout))) * rollout
        over = {"env_id": env_id, "seed": seed, "total_timesteps": steps, "run_name": name,
                "save_path": os.path.join(out, "trials", name, "model.pt"),
                "save_every": max(1, int(steps * save_every_frac)), "eval_every": max(rollout, steps // 20),
                "threads": threads}
        over.update(extra)
        return over
    steps = max(1, int(round(sac.TASK_DEFAULTS[task]["total_timesteps"] * scale)))
    over = {"env_id": env_id, "seed": seed, "total_timesteps": steps, "run_name": name,
            "save_path": checkpoint_path(out, name, state_dir), "save_buffer": True,
            "save_every": max(1, int(steps * save_every_frac)), "eval_every": max(1000, steps // 20),
            "learning_starts": min(5000, max(1, steps // 10)),
            "threads": threads}  # never more torch threads than the CPUs Ray gives the trial
    for flag in SCHEDULES.get(method, ()):
        over[flag] = max(1, int(round(mod.TASK_DEFAULTS[task][flag] * scale)))
    over.update(extra)
    return over


def run_trial(method: str, overrides: dict, trial_dir: str) -> dict:
    """Train one trial in this process, resuming from its checkpoint if a previous attempt left one."""
    import contextlib

    sys.path.insert(0, ROOT)
    mod = importlib.import_module(method)
    os.makedirs(trial_dir, exist_ok=True)
    args = mod.Args(**overrides)
    attempt = {"pid": os.getpid(), "start_step": 0, "time": time.time()}
    # the full checkpoint (with its buffer) or, on a machine without it, the committed one (no buffer)
    found = [(saved_step(p), i, p) for i, p in enumerate([overrides["save_path"], os.path.join(trial_dir, RESUME_FILE)])
             if os.path.isfile(p)]
    if found:
        start_step, _, args.resume = max(found, key=lambda f: (f[0], -f[1]))
        buffer = os.path.splitext(args.resume)[0] + "_buffer.pt"
        restored = os.path.isfile(buffer) and saved_step(buffer) == start_step
        attempt.update(start_step=start_step, resumed_from=args.resume,
                       replay_buffer=None if method in PPO_METHODS else "restored" if restored else "refilled from empty")
    with open(os.path.join(trial_dir, "attempts.jsonl"), "a") as f:
        f.write(json.dumps(attempt) + "\n")
    start_step = attempt["start_step"]
    # tensorboard writes to runs/<run_name> under the working directory: keep it inside the trial folder
    cwd = os.getcwd()
    os.chdir(trial_dir)
    try:
        with open("train.log", "a") as log, contextlib.redirect_stdout(log):
            summary = mod.train(args)
    finally:
        os.chdir(cwd)
    result = {"method": method, "env_id": overrides["env_id"], "seed": overrides["seed"],
              "global_step": summary["global_step"], "eval_returns": summary["eval_returns"],
              "eval_mean": sum(summary["eval_returns"]) / len(summary["eval_returns"]), "start_step": start_step}
    with open(os.path.join(trial_dir, "done.json"), "w") as f:
        json.dump(result, f)
    return result


def saved_step(path: str) -> int:
    """global_step of a checkpoint or buffer file, read lazily (a buffer file is GBs)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]


def write_resume_copy(full: str, dst: str) -> None:
    """trials/<name>/resume.pt: a SAC-family checkpoint without its buffer, where a fresh machine continues. Every stop
    commits a new version, so it keeps only what a continuation cannot rebuild: the networks in bfloat16 (tensors of
    >= 1024 values; smaller ones, the normalizer and the loop's state (RNGs, environment) exact). The optimizers start
    afresh and the target critic starts at the critic (saved once): a resume from it also refills its buffer from
    empty, a far larger change than either. The scripts read it like any checkpoint: load_state_dict casts to the
    parameters' dtype, and an optimizer state without moments starts them at zero."""
    import torch

    def rounded(value):
        if isinstance(value, dict):
            copy = type(value)((k, rounded(v)) for k, v in value.items())
            if hasattr(value, "_metadata"):
                copy._metadata = value._metadata
            return copy
        if torch.is_tensor(value) and value.dtype == torch.float32 and value.numel() >= 1024:
            return value.to(torch.bfloat16)
        return value

    def fresh(optimizer):  # its settings without its state (moments, step counts): loaded, they start afresh
        return optimizer and {"state": {}, "param_groups": optimizer["param_groups"]}

    ckpt = torch.load(full, map_location="cpu", weights_only=True)
    ckpt = {k: fresh(v) if k.endswith("_optimizer") else v if k in ("train_state", "normalizer") else rounded(v)
            for k, v in ckpt.items()}
    if "critic_target" in ckpt:
        ckpt["critic_target"] = ckpt["critic"]  # the same tensors: torch.save writes them once
    ckpt["resume_copy"] = ("networks in bfloat16 (tensors of >= 1024 values), optimizers afresh, target critic = "
                           "critic, no buffer")
    torch.save(ckpt, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def run_attacks(ckpt: str, out_json: str, attack_args: list[str]) -> dict:
    import subprocess

    cmd = [sys.executable, os.path.join(ROOT, "attacks", "eval_all.py"), "--ckpt", ckpt, *attack_args]
    log_path = out_json.replace(".json", ".log")
    with open(log_path, "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    from attacks.common import copy_row

    return copy_row(os.path.splitext(ckpt)[0] + "_attacks.json", out_json)


class Storage:
    """A study's folder that every node and the driver reach: a local or shared path, or a pyarrow.fs URI (s3://,
    gs://, ...), as Ray Train's storage_path. Names inside it are '/'-separated and relative."""

    def __init__(self, uri: str):
        self.uri = uri
        if "://" in uri and not uri.startswith("file://"):
            import pyarrow.fs  # ImportError: the driver says what to install

            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)
        else:
            self.fs, self.root = None, os.path.abspath(uri.removeprefix("file://"))
            self.uri = self.root  # what the workers receive: absolute, whatever their working folder

    def path(self, rel: str = "") -> str:
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        if self.fs is None:
            return os.path.exists(self.path(rel))
        import pyarrow.fs

        return self.fs.get_file_info(self.path(rel)).type != pyarrow.fs.FileType.NotFound

    def put(self, local: str, rel: str) -> None:
        """One file; a reader never sees it half written (temp + rename; an object store's upload is atomic)."""
        import shutil

        dst = self.path(rel)
        if self.fs is None:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            tmp = f"{dst}.tmp.{os.getpid()}"
            shutil.copyfile(local, tmp)
            os.replace(tmp, dst)
            return
        self.fs.create_dir(dst.rpartition("/")[0], recursive=True)
        with open(local, "rb") as src, self.fs.open_output_stream(dst) as out:
            shutil.copyfileobj(src, out, 1 << 20)

    def files(self, rel: str) -> list[str]:
        """The files under rel (or rel itself when it is a file), relative to rel; [] when absent."""
        if self.fs is None:
            top = self.path(rel)
            if os.path.isfile(top):
                return [""]
            return sorted(os.path.relpath(os.path.join(d, f), top).replace(os.sep, "/")
                          for d, _, fs in os.walk(top) for f in fs if ".tmp." not in f)
        import pyarrow.fs

        top = self.path(rel)
        info = self.fs.get_file_info(top)
        if info.type == pyarrow.fs.FileType.File:
            return [""]
        if info.type == pyarrow.fs.FileType.NotFound:
            return []
        found = self.fs.get_file_info(pyarrow.fs.FileSelector(top, recursive=True))
        return sorted(i.path[len(top.rstrip("/")) + 1:] for i in found if i.type == pyarrow.fs.FileType.File)

    def get(self, rel: str, local: str, skip: tuple = ()) -> list[str]:
        """Copies rel (a file or a folder) to local; returns the local files written."""
        import shutil

        written = []
        for sub in self.files(rel):
            if sub.endswith(skip):
                continue
            src, dst = self.path(f"{rel}/{sub}" if sub else rel), os.path.join(local, sub) if sub else local
            os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
            tmp = f"{dst}.tmp.{os.getpid()}"
            if self.fs is None:
                shutil.copyfile(src, tmp)
            else:
                with self.fs.open_input_stream(src) as f, open(tmp, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
            os.replace(tmp, dst)
            written.append(dst)
        return written

    def put_tree(self, local: str, rel: str, sent: Optional[dict] = None, last: tuple = ()) -> None:
        """Every file under local (temp files aside) that changed since `sent` saw it; a replay buffer before its
        checkpoint and the `last` names after everything else, so what the storage holds is always resumable."""
        order = lambda p: (p.endswith(last), not p.endswith("_buffer.pt"), p)  # noqa: E731
        paths = sorted((os.path.join(d, f) for d, _, fs in os.walk(local) for f in fs if ".tmp." not in f), key=order)
        for p in paths:
            try:
                st = os.stat(p)
            except FileNotFoundError:  # replaced by the trainer meanwhile: the next pass sends it
                continue
            if sent is not None and sent.get(p) == (st.st_size, st.st_mtime_ns):
                continue
            try:
                self.put(p, f"{rel}/{os.path.relpath(p, local).replace(os.sep, '/')}")
            except FileNotFoundError:  # removed by the task meanwhile (a finished attacker's training state)
                continue
            if sent is not None:
                sent[p] = (st.st_size, st.st_mtime_ns)

    def remove(self, rel: str) -> None:
        """One file; nothing if it is not there (or another remover was first)."""
        with contextlib.suppress(FileNotFoundError):
            if self.fs is None:
                os.remove(self.path(rel))
            else:
                self.fs.delete_file(self.path(rel))


class FolderSender:
    """`with FolderSender(store, local, rel):` sends what changes under the local folder to the storage, from a
    thread every `every_s` seconds and once more on the way out (an exception included), so a task killed on one
    node continues on another from its last save. `known`: files Storage.get wrote at the start, sent again only
    once changed (another task may meanwhile have stored a newer one of its own under the same folder). `match`:
    which files travel. `removals`: a file that travelled, or was got, and was gone when a pass listed the folder is
    removed from the storage after that pass sent the others (so a training state leaves only once the attacker and
    record written before its deletion are there). A failed send is one line; the next pass tries again."""

    def __init__(self, store: Storage, local: str, rel: str, every_s: float = 2.0, known: tuple = (),
                 match=lambda path: True, removals: bool = False, last: tuple = ()):
        self.store, self.local, self.rel, self.every_s = store, local, rel, every_s
        self.match, self.removals, self.last = match, removals, last
        self.sent = {p: (os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in known if os.path.isfile(p)}
        self.lock = threading.Lock()

    def send(self) -> None:
        with self.lock:  # the thread's pass and the last one never interleave
            order = lambda p: (p.endswith(self.last), p)  # noqa: E731
            paths = sorted((os.path.join(d, f) for d, _, fs in os.walk(self.local) for f in fs
                            if ".tmp." not in f and self.match(os.path.join(d, f))), key=order)
            gone = [p for p in self.sent if p not in paths] if self.removals else []
            for p in paths:
                try:
                    st = os.stat(p)
                    if self.sent.get(p) != (st.st_size, st.st_mtime_ns):
                        self.store.put(p, self.name(p))
                        self.sent[p] = (st.st_size, st.st_mtime_ns)
                except FileNotFoundError:  # removed by the task since the listing: the next pass removes it
                    continue
            for p in gone:
                self.store.remove(self.name(p))
                del self.sent[p]

    def name(self, path: str) -> str:
        sub = os.path.relpath(path, self.local).replace(os.sep, "/")
        return f"{self.rel}/{sub}" if self.rel else sub

    def __enter__(self) -> "FolderSender":
        self.stop = threading.Event()

        def loop() -> None:
            while not self.stop.wait(self.every_s):
                try:
                    self.send()
                except Exception as e:  # a storage hiccup: the task goes on, the next pass sends what changed
                    print(f"[storage] sending {self.local} to {self.store.uri}/{self.rel} failed ({one_line(e)}); "
                          f"retrying in {self.every_s:g} s", flush=True)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.send()


def storage_problem(uri: str) -> Optional[str]:
    """Why the driver cannot use --storage (one line), or None after a probe file went in and out."""
    import tempfile

    try:
        store = Storage(uri)
    except ImportError:
        return f"--storage {uri}: a URI storage needs pyarrow, which is not installed (pip install pyarrow)"
    except Exception as e:  # an unknown scheme, a filesystem pyarrow was built without, bad credentials
        return f"--storage {uri}: {one_line(e)}"
    probe = f".probe.{os.getpid()}"
    try:
        with tempfile.NamedTemporaryFile() as f:
            store.put(f.name, probe)
        if store.fs is None:
            os.remove(store.path(probe))
        else:
            store.fs.delete_file(store.path(probe))
    except Exception as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
        return f"--storage {uri}: the driver cannot write there ({why})"
    return None


def call(fn: str, *args):
    """Runs sweep.<fn> from the worker's own copy of the code (a function pickled from the driver's __main__ would
    carry the driver's paths)."""
    import sweep as worker_sweep

    return getattr(worker_sweep, fn)(*args)


def storage_trial(method: str, overrides: dict, storage_uri: str, every_s: float = 2.0) -> dict:
    """A trial on a node that shares no folder with the driver: it runs in a scratch folder of this node, starts
    from whatever an earlier attempt (on any node) left in the storage, sends its checkpoint (buffer first), log,
    attempts and events there each time the checkpoint changes, and its slim model and done marker (last) at the end."""
    import shutil
    import tempfile
    import threading

    from attacks.common import slim_checkpoint

    store, name = Storage(storage_uri), overrides["run_name"]
    scratch = tempfile.mkdtemp(prefix=f"{name}.")
    trial_dir, rel = os.path.join(scratch, "trials", name), f"trials/{name}"
    store.get(rel, trial_dir)
    overrides = {**overrides, "save_path": os.path.join(trial_dir, "model.pt")}
    sent: dict = {}
    stop = threading.Event()

    def send_checkpoints() -> None:
        seen = None
        while not stop.wait(every_s):
            try:
                stamp = os.stat(overrides["save_path"]).st_mtime_ns
            except FileNotFoundError:
                continue
            if stamp != seen:
                store.put_tree(trial_dir, rel, sent, last=("model.pt",))
                seen = stamp

    sender = threading.Thread(target=send_checkpoints, daemon=True)
    sender.start()
    try:
        result = run_trial(method, overrides, trial_dir)
    finally:
        stop.set()
        sender.join()
        if not os.path.isfile(os.path.join(trial_dir, "done.json")):  # stopped or failed: its last checkpoint counts
            store.put_tree(trial_dir, rel, sent, last=("model.pt",))
    slim = os.path.join(scratch, "models", f"{name}.pt")
    slim_checkpoint(overrides["save_path"], slim)
    store.put(slim, f"models/{name}.pt")
    store.put_tree(trial_dir, rel, sent, last=("done.json",))
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def storage_attacks(victim: bytes, rel_ckpt: str, rel_out: str, storage_uri: str, attack_args: list[str]) -> dict:
    """run_attacks on a node that shares no folder with the driver: the victim comes as bytes, attackers and RS
    critics trained by earlier suites (and the saved training state of one in progress) come from the storage,
    every file the suite writes goes back there, and an attacker's training state goes there as it is saved (every
    10k steps), so a retry on another node continues it."""
    import shutil
    import tempfile

    store, scratch = Storage(storage_uri), tempfile.mkdtemp(prefix="attacks.")
    ckpt = os.path.join(scratch, rel_ckpt)
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    with open(ckpt, "wb") as f:
        f.write(victim)
    cache = f"{os.path.dirname(rel_ckpt)}/attackers"
    local_cache = os.path.join(scratch, cache)
    got = store.get(cache, local_cache, skip=(".partial.pt",))  # of the other victims, only what is finished
    own = os.path.basename(os.path.splitext(rel_ckpt)[0]) + "_"
    for name in store.files(cache):
        if name.startswith(own) and name.endswith(".partial.pt") and "/" not in name:
            got += store.get(f"{cache}/{name}", os.path.join(local_cache, name))
    os.makedirs(local_cache, exist_ok=True)
    # a record after its attacker; the finished attacker's training state leaves the storage after both
    with FolderSender(store, local_cache, cache, known=got, removals=True, last=(".json",)):
        row = run_attacks(ckpt, os.path.join(scratch, rel_out), attack_args)
    for rel in attack_files(rel_ckpt, rel_out):
        if os.path.isfile(os.path.join(scratch, rel)):
            store.put(os.path.join(scratch, rel), rel)
    shutil.rmtree(scratch, ignore_errors=True)
    return row


def attack_files(rel_ckpt: str, rel_out: str) -> list[str]:
    """What an attack run writes besides the attackers: the checkpoint's row (.json, .md), its own JSON and log."""
    stem, out_stem = os.path.splitext(rel_ckpt)[0], os.path.splitext(rel_out)[0]
    return list(dict.fromkeys([f"{stem}_attacks.json", f"{stem}_attacks.md", f"{out_stem}.json", f"{out_stem}.log"]))


def fetch_attacks(store: Storage, out: str, rel_ckpt: str, rel_out: str) -> None:
    """The driver's copy of an attack run's files; each row names the driver's checkpoint, not the worker's (its
    other files are named relative to it, and land in the same layout)."""
    from attacks.common import write_json_atomically

    for rel in attack_files(rel_ckpt, rel_out):
        for path in store.get(rel, os.path.join(out, rel)):
            if path.endswith(".json"):
                with open(path) as f:
                    row = json.load(f)
                write_json_atomically(path, {**row, "ckpt": os.path.join(out, rel_ckpt)})
    cache = f"{os.path.dirname(rel_ckpt)}/attackers"
    store.get(cache, os.path.join(out, cache), skip=(".partial.pt",))  # training states in progress stay there


def slim_model(out: str, name: str, state_dir: Optional[str] = None) -> Optional[str]:
    """models/<name>.pt from the trial's final checkpoint (once); None if neither exists."""
    from attacks.common import slim_checkpoint

    slim = os.path.join(out, "models", f"{name}.pt")
    full = checkpoint_path(out, name, state_dir)
    if not os.path.isfile(slim):
        if not os.path.isfile(full):
            return None
        slim_checkpoint(full, slim)
    return slim


def git_commit(paths: list[str], message: str, force: tuple = (), repo: str = ROOT) -> bool:
    """Commits exactly these paths (other changes in the work tree stay as they are); `force`: paths among them that
    .gitignore excludes (a PPO trial's resume checkpoint). If anything fails the paths are unstaged again, so a failed
    commit never leaves them (a checkpoint above all) in the index for someone else's commit. A failure is reported, the study goes on;
    returns whether the paths are committed (True also when nothing had changed)."""
    import subprocess

    paths = [p for p in paths if os.path.exists(p) or tracked(p, repo)]  # a tracked path gone: its deletion
    forced = [p for p in force if p in paths]
    if not paths:
        return True
    plain = [p for p in paths if p not in forced]
    steps = ([["git", "add", "--", *plain]] if plain else []) + ([["git", "add", "-f", "--", *forced]] if forced else [])
    steps.append(["git", "commit", "-q", "-m", message, "--", *paths])
    try:
        for cmd in steps:
            for attempt in range(10):  # another commit (a second sweep, a person) may hold the index lock
                proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
                if proc.returncode == 0 or "index.lock" not in proc.stderr:
                    break
                time.sleep(3)
            said = proc.stdout + proc.stderr
            unchanged = ("nothing to commit", "nothing added to commit", "no changes added to commit")  # the last: other
            if proc.returncode != 0 and not any(m in said for m in unchanged):  # files changed, these did not
                reason = (said.strip().splitlines() or [f"exit status {proc.returncode}"])[0][:200]
                print(f"[sweep] git {cmd[1]} failed ({reason}); the files stay in the work tree", flush=True)
                subprocess.run(["git", "reset", "-q", "--", *paths], cwd=repo, capture_output=True)
                return False
    except OSError as e:
        print(f"[sweep] git commit failed ({e}); the files stay in the work tree", flush=True)
        return False
    return True


def trial_files(out: str, name: str, repo: str = ROOT) -> list[str]:
    trial_dir = os.path.join(out, "trials", name)
    files = [os.path.join(trial_dir, f) for f in ("done.json", "attempts.jsonl", "train.log", "runs")] + \
        [os.path.join(out, "models", f"{name}.pt")]
    for ckpt in (os.path.join(trial_dir, "model.pt"), os.path.join(trial_dir, RESUME_FILE)):
        if tracked(ckpt, repo):  # a progress commit tracked a resume checkpoint: its final state goes in with the rest
            files.append(ckpt)
    return files


def tracked(path: str, repo: str = ROOT) -> bool:
    import subprocess

    return subprocess.run(["git", "ls-files", "--error-unmatch", "--", path], cwd=repo,
                          capture_output=True).returncode == 0


def commit_progress(out: str, names, committed: dict, repo: str = ROOT, sac_family: bool = False,
                    state_dir: Optional[str] = None) -> list[str]:
    """Commits the resume checkpoint (with its log, attempts and events) of each unfinished trial whose checkpoint
    changed since its last progress commit, so a study cut at a session's end continues from it on a fresh clone.
    A PPO-family trial's checkpoint is committed where it is (small: networks, Adam moments, normalizer). A
    SAC-family trial's resume state includes a replay buffer (GBs): only with `sac_family` (when the sweep stops) is
    its checkpoint, without the buffer, written to trials/<name>/resume.pt (write_resume_copy) and committed; a run
    resumed from it refills its buffer from empty (recorded in attempts.jsonl). `committed` maps trial -> the
    checkpoint mtime last committed; returns the trials committed now."""
    now = []
    for name in names:
        ppo = name.split("__")[0] in PPO_METHODS
        ckpt = checkpoint_path(out, name, state_dir)
        if not (ppo or sac_family) or not os.path.isfile(ckpt):
            continue
        try:
            stamp = os.stat(ckpt).st_mtime_ns
            if committed.get(name) == stamp:
                continue
            step = saved_step(ckpt)
            if not ppo:
                resume = os.path.join(out, "trials", name, RESUME_FILE)
                write_resume_copy(ckpt, resume)
                ckpt = resume
            files = [f for f in trial_files(out, name, repo) if not f.endswith(("done.json", f"{name}.pt", "model.pt"))]
            if git_commit(files + [ckpt], f"study {os.path.basename(out)}: trial {name} in progress (step {step})",
                          force=(ckpt,), repo=repo):
                committed[name] = stamp
                now.append(name)
        except Exception as e:  # the study goes on; the next progress commit tries again
            print(f"[sweep] progress commit of {name} failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
    return now


def snapshot_models(out: str, names, every: int, state_dir: Optional[str] = None, at: frozenset = frozenset()) -> list[str]:
    """models/checkpoints/<name>_step<N>.pt: a slim copy of each kept checkpoint (the trials run with
    --keep-checkpoints) whose step N is a multiple of `every` (the robustness-over-training curve; 0: none) or in
    `at` (readings between them). Every kept checkpoint is deleted once seen, with its buffer copy: the trial never
    reads them. Returns the files written."""
    import glob
    import re

    from attacks.common import slim_checkpoint

    written = []
    for name in names:
        folder = os.path.dirname(checkpoint_path(out, name, state_dir))
        for kept in sorted(glob.glob(os.path.join(folder, "model_step*.pt"))):
            match = re.fullmatch(r"model_step(\d+)\.pt", os.path.basename(kept))
            if not match:  # model_step<N>_buffer.pt: removed with its checkpoint
                continue
            step = int(match.group(1))
            dst = os.path.join(out, "models", "checkpoints", f"{name}_step{step}.pt")
            if ((every and step % every == 0) or step in at) and not os.path.isfile(dst):
                slim_checkpoint(kept, dst)
                written.append(dst)
            for path in (kept, kept[:-3] + "_buffer.pt"):  # the buffer copy is written before its checkpoint
                if os.path.isfile(path):
                    os.remove(path)
    return written


def attacked_trial(row: dict) -> str:
    """The trial an attack row belongs to: its checkpoint is attacks/<trial>.pt, models/<trial>.pt or
    trials/<trial>/model.pt."""
    stem = os.path.splitext(os.path.basename(row["ckpt"]))[0]
    return stem if "__s" in stem else os.path.basename(os.path.dirname(row["ckpt"]))


def same_attacks(a) -> bool:
    """The median seed's suite asks for exactly the per-seed attacks, with the same settings."""
    names = lambda spec: sorted(n.strip() for n in spec.split(",") if n.strip())  # noqa: E731
    return (a.attacks != "all" and names(a.attacks) == names(a.seed_attacks)
            and a.attack_args.split() == a.seed_attack_args.split())


def median_seed(results: list[dict]) -> dict:
    """The run whose final clean return is the median (lower median for an even count)."""
    ordered = sorted(results, key=lambda r: r["eval_mean"])
    return ordered[(len(ordered) - 1) // 2]


# What a trial's or an attack's result depends on: every invocation into one --out must agree on these (the grid
# keys methods/envs/seeds may grow; trials are named by method, env and seed only, so a changed setting would
# silently mix two experiments in one table).
DEFINING = ("budget_scale", "train_args", "attacks", "attack_args", "episodes", "seed_attacks", "seed_attack_args")


def _canonical(key: str, value):
    if key == "train_args":
        return json.loads(value)
    if key in ("attack_args", "seed_attack_args"):
        return value.split()
    return value


def git_toplevel(path: str) -> Optional[str]:
    import subprocess

    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_version() -> dict:
    """The commit the trials' code comes from (a study runs from a fixed commit, e.g. a git worktree)."""
    import subprocess

    run = lambda *cmd: subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {"commit": run("rev-parse", "HEAD") or None, "dir": ROOT,
            "dirty": bool(run("status", "--porcelain", "--untracked-files=no")), "time": time.time()}


def record_sweep(path: str, settings: dict, argv: list, code: Optional[dict] = None) -> None:
    """sweep.json: the settings of the study in --out, the union of the grids run into it, every invocation's argv
    and the code version it ran. A setting in DEFINING that differs from the recorded one is refused (ValueError):
    another experiment, another --out."""
    record = {**settings, "invocations": [list(argv)], "code": [code] if code else []}
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        differ = [k for k in DEFINING if k in old and _canonical(k, old[k]) != _canonical(k, settings[k])]
        if differ:
            was = ", ".join(f"--{k.replace('_', '-')} {old[k]!r}" for k in differ)
            raise ValueError(f"{os.path.dirname(path)} holds a study run with {was}: give a different setting its own "
                             f"--out (trials are named by method, env and seed only)")
        record = {**old, "invocations": old.get("invocations", [old["argv"]] if "argv" in old else []) + [list(argv)],
                  "code": old.get("code", []) + ([code] if code else [])}
        record.pop("argv", None)
        for key in ("methods", "envs"):
            record[key] = old.get(key, []) + [v for v in settings[key] if v not in old.get(key, [])]
        record["seeds"] = max(old.get("seeds", 0), settings["seeds"])
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--envs", nargs="+", default=["HalfCheetah-v4"])
    p.add_argument("--seeds", type=int, default=8, help="seeds 1..N per method and env (paper: 8)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="fraction of the paper's budgets and schedules")
    p.add_argument("--out", default="sweeps/default")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' to join a running cluster)")
    p.add_argument("--storage", default=None,
                   help="where trials and attacks write, for nodes that share no folder with the driver: a path every "
                        "node reaches (NFS) or a pyarrow.fs URI (s3://bucket/studies, gs://...); the study is "
                        "<storage>/<name of --out>, every finished piece is copied into --out (needed with --address)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per trial")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per trial (fractions share a GPU)")
    p.add_argument("--local-cpus", type=int, default=None, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a trial whose worker died")
    p.add_argument("--save-every-frac", type=float, default=0.05, help="checkpoint interval as a fraction of the budget")
    p.add_argument("--attacks", default="all", help="attackers for the median seed (eval_all.py --attacks)")
    p.add_argument("--attack-args", default="", help="extra eval_all.py arguments, e.g. '--attack-budget 50000'")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--train-args", default="{}", help="JSON of extra Args for every trial, e.g. '{\"hidden_sizes\": [64, 64]}'")
    p.add_argument("--seed-attacks", default="natural,uniform,mad,pgd",
                   help="attacks run on EVERY seed's slim model ('' to skip); the median seed also gets --attacks")
    p.add_argument("--seed-attack-args", default="", help="extra eval_all.py arguments for the per-seed attacks")
    p.add_argument("--skip-attacks", action="store_true", help="train only (no per-seed, no median-seed attacks)")
    p.add_argument("--git-commit", action="store_true",
                   help="commit each finished trial (marker, log, events, slim model) and attack JSON as it lands")
    p.add_argument("--commit-progress-min", type=float, default=20.0,
                   help="with --git-commit: every N minutes, and when the sweep is stopped, commit each running "
                        "PPO-family trial's resume checkpoint, so a fresh clone continues it (0: never); SAC-family "
                        "trials' checkpoints (without the buffer) are committed when the sweep is stopped")
    p.add_argument("--state-dir", default=None,
                   help="folder for SAC-family trials' full checkpoints and replay buffers, outside the work tree "
                        "(default: the trial folders in --out)")
    p.add_argument("--slim-every", type=int, default=0,
                   help="also keep a slim model every N agent steps in models/checkpoints/ (committed with --git-commit; "
                        "a multiple of the trials' checkpoint interval; 0: only the final one)")
    p.add_argument("--slim-at", default="",
                   help="comma-separated agent steps that also get a slim model (e.g. 650000,700000: readings between "
                        "the --slim-every ones; each a multiple of the trials' checkpoint interval)")
    a = p.parse_args(argv)
    try:
        slim_at = frozenset(int(s) for s in a.slim_at.split(",") if s.strip())
    except ValueError:
        p.error(f"--slim-at {a.slim_at!r}: expected comma-separated step counts, e.g. 650000,700000")
    if any(s <= 0 for s in slim_at):
        p.error(f"--slim-at {a.slim_at!r}: steps must be positive")
    if not 0 < a.budget_scale <= 10 or a.seeds < 1 or a.commit_progress_min < 0 or a.slim_every < 0:
        p.error("--budget-scale must be in (0, 10], --seeds >= 1, --commit-progress-min >= 0 and --slim-every >= 0")
    unknown = [m for m in a.methods if not os.path.isfile(os.path.join(ROOT, f"{m}.py"))]
    if unknown:
        p.error(f"unknown method(s) {unknown}")
    import sac

    bad_envs = [e for e in a.envs if sac.task_name(e) not in sac.TASK_DEFAULTS]
    if bad_envs:
        p.error(f"no paper budget for {bad_envs}; use one of {ENVS}")
    try:
        extra = json.loads(a.train_args)
    except json.JSONDecodeError as e:
        p.error(f"--train-args is not valid JSON ({e})")
    if not isinstance(extra, dict):
        p.error("--train-args must be a JSON object")
    if "hidden_sizes" in extra:
        extra["hidden_sizes"] = tuple(extra["hidden_sizes"])
    out = os.path.abspath(a.out)
    state_dir = os.path.abspath(a.state_dir) if a.state_dir else None
    if a.address:
        unreachable = cluster_unreachable(a.address)
        if unreachable:
            p.error(unreachable)
    if a.address and not a.storage:
        p.error("--address: give --storage, a path every node reaches or a URI (s3://, gs://): a worker node cannot "
                "write into the driver's --out")
    store = None
    if a.storage:
        if a.state_dir or a.slim_every or slim_at:
            p.error("--state-dir, --slim-every and --slim-at keep files on the training node: not with --storage")
        study_uri = f"{a.storage.rstrip('/')}/{os.path.basename(out)}"
        problem = storage_problem(study_uri)
        if problem:
            p.error(problem)
        store = Storage(study_uri)
    if a.slim_every or slim_at:  # every trial's checkpoint grid, before anything is recorded or started
        for method in a.methods:
            if method in PPO_METHODS:
                p.error(f"--slim-every/--slim-at: SAC-family methods only ({method} saves at rollout ends)")
            for env_id in a.envs:
                grid = trial_overrides(method, env_id, 1, a.budget_scale, out, a.save_every_frac, extra)
                every, name = grid["save_every"], trial_name(method, env_id, 1)
                for flag, step in [("--slim-every", a.slim_every)] + [("--slim-at", s) for s in sorted(slim_at)]:
                    if step and step % every:
                        p.error(f"{flag} {step} is not a multiple of {name}'s checkpoint interval {every} "
                                "(--save-every-frac)")
                if slim_at and max(slim_at) >= grid["total_timesteps"]:
                    p.error(f"--slim-at {max(slim_at)}: {name} ends at {grid['total_timesteps']} (its final slim "
                            "model is models/<trial>.pt)")
    os.makedirs(os.path.join(out, "attacks"), exist_ok=True)
    repo = git_toplevel(out) if a.git_commit else ROOT
    if repo is None:
        p.error(f"--git-commit: {out} is not inside a git work tree")
    try:
        record_sweep(os.path.join(out, "sweep.json"), vars(a), sys.argv, code=code_version())
    except ValueError as e:
        p.error(str(e))
    commit = functools.partial(git_commit, repo=repo)  # into the repository that holds --out (code may run elsewhere)
    if a.git_commit:  # the study's settings first: a fresh clone refuses a changed setting only if it has them
        commit([os.path.join(out, "sweep.json")], f"study {os.path.basename(out)}: settings and invocations")

    import ray

    threads_env = {"OMP_NUM_THREADS": str(max(1, int(a.num_cpus)))}
    if a.address:
        # the workers' code: this folder as Ray's working_dir, without studies and runs (large, and not code)
        excludes = ["runs", "sweeps", ".git", "results"] + [
            os.path.relpath(d, ROOT) for d in (out, store.path() if store.fs is None else None)
            if d and os.path.abspath(d).startswith(ROOT + os.sep)]
        ray.init(address=a.address, runtime_env={"working_dir": ROOT, "excludes": excludes, "env_vars": threads_env})
    else:
        # Ray runs workers at nice 15 by default; a local sweep should get the machine like any other job.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # "local": always a Ray of its own, whatever RAY_ADDRESS or a `ray start` record on this machine says
        ray.init(address="local", num_cpus=a.local_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": ROOT, **threads_env}})
    train_remote = ray.remote(num_cpus=a.num_cpus, num_gpus=a.num_gpus, max_retries=a.max_retries)(call)
    attack_remote = ray.remote(num_cpus=a.num_cpus, max_retries=a.max_retries)(call)
    attack_rels: dict = {}  # ref -> (checkpoint, JSON) relative to --out, for a storage run's files

    def train_task(method: str, over: dict, trial_dir: str):
        if store is None:
            return train_remote.remote("run_trial", method, over, trial_dir)
        over = {k: v for k, v in over.items() if k != "save_path"}  # the driver's path: the worker picks its own
        return train_remote.remote("storage_trial", method, over, store.uri)

    def attack_task(ckpt: str, out_json: str, args: list[str]):
        if store is None:
            return attack_remote.remote("run_attacks", ckpt, out_json, args)
        rels = (os.path.relpath(ckpt, out), os.path.relpath(out_json, out))
        with open(ckpt, "rb") as f:
            ref = attack_remote.remote("storage_attacks", f.read(), *rels, store.uri, args)
        attack_rels[ref] = rels
        return ref

    def landed(ref, name: Optional[str] = None) -> None:
        """A storage run's files into --out: a trial's (no replay buffer) and its slim model, or an attack run's."""
        if store is None:
            return
        if name is not None:
            store.get(f"trials/{name}", os.path.join(out, "trials", name), skip=("_buffer.pt",))
            store.get(f"models/{name}.pt", os.path.join(out, "models", f"{name}.pt"))
        elif ref in attack_rels:
            fetch_attacks(store, out, *attack_rels.pop(ref))
    seed_attack_args = ["--attacks", a.seed_attacks, "--episodes", str(a.episodes), *a.seed_attack_args.split()]
    seed_jobs: dict = {}

    def snapshots(names) -> None:
        if a.slim_every or slim_at:
            written = snapshot_models(out, names, a.slim_every, state_dir, slim_at)
            if written and a.git_commit:
                commit(written, f"study {os.path.basename(out)}: slim models {', '.join(map(os.path.basename, written))}")

    def finished(name: str, announce: bool) -> None:
        """A trial is done: its slim model, its commit, its per-seed attacks (each once)."""
        slim = slim_model(out, name, state_dir)
        snapshots([name])
        resume = os.path.join(out, "trials", name, RESUME_FILE)
        if os.path.isfile(resume):  # the finished run's final checkpoint supersedes it (the commit records the removal)
            os.remove(resume)
        if a.git_commit and announce:
            commit(trial_files(out, name, repo), f"study {os.path.basename(out)}: trial {name} finished")
        if a.skip_attacks or not a.seed_attacks or slim is None:
            return
        stored = f"models/{name}_attacks.json"
        if store is not None and not os.path.isfile(slim[:-3] + "_attacks.json") and store.exists(stored):
            fetch_attacks(store, out, f"models/{name}.pt", stored)  # stored while no driver waited for it
        if not os.path.isfile(slim[:-3] + "_attacks.json"):
            seed_jobs[attack_task(slim, slim[:-3] + "_attacks.json", seed_attack_args)] = name

    pending, done = {}, []
    for env_id in a.envs:  # seed-major: every method's seed 1 is queued (and lands) before any seed 2
        for seed in range(1, a.seeds + 1):
            for method in a.methods:
                name = trial_name(method, env_id, seed)
                trial_dir = os.path.join(out, "trials", name)
                marker = os.path.join(trial_dir, "done.json")
                if store is not None and not os.path.isfile(marker) and store.exists(f"trials/{name}/done.json"):
                    landed(None, name)  # finished while no driver waited for it
                if os.path.isfile(marker):
                    done.append(json.load(open(marker)))
                    print(f"[sweep] finished earlier, skipped: {name}", flush=True)
                    finished(name, announce=not os.path.isfile(os.path.join(out, "models", f"{name}.pt")))
                    continue
                over = trial_overrides(method, env_id, seed, a.budget_scale, out, a.save_every_frac, extra,
                                       max(1, int(a.num_cpus)), state_dir)
                over["keep_checkpoints"] = bool(a.slim_every or slim_at)  # the driver slims or deletes each copy
                pending[train_task(method, over, trial_dir)] = name
    total = len(pending) + len(done)
    print(f"[sweep] {len(pending)} trials to run, {len(done)} already finished", flush=True)
    start = time.time()
    failed: list[str] = []
    stop = install_stop_handler()
    progress: dict = {}  # trial -> mtime of its last committed resume checkpoint
    last_progress = time.time()

    def progress_commit(stopping: bool = False) -> None:
        if a.git_commit and (a.commit_progress_min > 0 or stopping):
            for name in commit_progress(out, sorted(pending.values()), progress, repo, sac_family=stopping,
                                        state_dir=state_dir):
                print(f"[sweep] progress of {name} committed (its resume checkpoint)", flush=True)

    def seed_attacks_landed(ref) -> None:
        name = seed_jobs.pop(ref)
        try:
            row = ray.get(ref)
            landed(ref)
        except Exception as e:
            failed.append(f"attacks of {name}")
            print(f"[sweep] per-seed attacks of {name} failed: {one_line(e)}", flush=True)
            return
        print(f"[sweep] per-seed attacks {name}: worst {worst_text(row)}", flush=True)
        if a.git_commit:
            stem = os.path.join(out, "models", name)
            commit([f"{stem}_attacks.json", f"{stem}_attacks.md", f"{stem}_attacks.log"],
                       f"study {os.path.basename(out)}: {name} attacked")
    while pending or seed_jobs:  # trainings and per-seed attacks, each handled (and committed) as it lands
        ready, _ = ray.wait(list(pending) + list(seed_jobs), num_returns=1, timeout=1.0)
        if stop["signal"] is not None:
            preempt(ray, {**pending, **seed_jobs}, stop["signal"],
                    on_stopped=lambda: (snapshots(pending.values()), progress_commit(stopping=True)))
        if a.commit_progress_min > 0 and time.time() - last_progress > 60 * a.commit_progress_min:
            progress_commit()
            last_progress = time.time()
        snapshots(pending.values())
        if not ready:
            continue
        if ready[0] in seed_jobs:
            seed_attacks_landed(ready[0])
            continue
        name = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
            landed(ready[0], name)
        except Exception as e:  # a diverged or broken trial: reported, the others go on
            failed.append(name)
            print(f"[sweep] trial {name} failed: {one_line(e)}", flush=True)
            continue
        done.append(result)
        resumed = f" (resumed at step {result['start_step']})" if result["start_step"] else ""
        print(f"[sweep] {len(done)}/{total} {name}: clean return {result['eval_mean']:.1f}{resumed} "
              f"| {time.time() - start:.0f}s", flush=True)
        finished(name, announce=True)

    if not a.skip_attacks:
        attack_args = ["--attacks", a.attacks, "--episodes", str(a.episodes), *a.attack_args.split()]
        jobs = {}
        for env_id in a.envs:
            for method in a.methods:
                runs = [r for r in done if r["method"] == method and r["env_id"] == env_id]
                if not runs:
                    continue
                chosen = median_seed(runs)
                out_json = os.path.join(out, "attacks", f"{method}__{env_id}.json")
                name = trial_name(method, env_id, chosen["seed"])
                rel_json = os.path.relpath(out_json, out)
                if store is not None and not os.path.isfile(out_json) and store.exists(rel_json):
                    fetch_attacks(store, out, f"attacks/{name}.pt", rel_json)  # stored while no driver waited for it
                if os.path.isfile(out_json):
                    earlier = attacked_trial(json.load(open(out_json)))
                    if earlier == name:
                        print(f"[sweep] attacks finished earlier, skipped: {method} {env_id}", flush=True)
                        continue
                    # more seeds moved the median: the suite belongs on the new one
                    print(f"[sweep] the median seed of {method} {env_id} is now {chosen['seed']} "
                          f"(the suite attacked {earlier}): attacking it", flush=True)
                seed_row = os.path.join(out, "models", f"{name}_attacks.json")
                if same_attacks(a) and os.path.isfile(seed_row):  # the suite IS the per-seed attacks: reuse them
                    from attacks.common import copy_row

                    copy_row(seed_row, out_json)
                    print(f"[sweep] attacks of {method} {env_id}: the median seed's per-seed attacks "
                          f"(the same attacks and settings)", flush=True)
                    if a.git_commit:
                        commit([out_json], f"study {os.path.basename(out)}: {method} {env_id} median seed attacked")
                    continue
                ckpt = os.path.join(out, "attacks", f"{name}.pt")  # its own copy: its _attacks.json lands beside it
                if not os.path.isfile(ckpt):
                    import shutil

                    slim = slim_model(out, name, state_dir)
                    if slim is None:
                        print(f"[sweep] no model for {name}: its attacks are skipped", flush=True)
                        continue
                    shutil.copyfile(slim, ckpt)
                print(f"[sweep] attacking {method} {env_id}: median seed {chosen['seed']} "
                      f"(clean {chosen['eval_mean']:.1f})", flush=True)
                # the columns the per-seed attacks already evaluated with the same settings are copied, not re-run
                # (eval_all --reuse checks the model bytes and settings); on a cluster the worker lacks the row
                reuse = ["--reuse", seed_row] if store is None and os.path.isfile(seed_row) else []
                jobs[attack_task(ckpt, out_json, attack_args + reuse)] = (method, env_id, ckpt)
        def commit_caches() -> None:  # a suite cut short keeps what it trained: a re-run reads it back
            if a.git_commit:
                commit([os.path.join(out, "attacks", "attackers")],
                           f"study {os.path.basename(out)}: attackers and Sarsa critics of an unfinished suite")

        while jobs:
            ready, _ = ray.wait(list(jobs), num_returns=1, timeout=1.0)
            if stop["signal"] is not None:
                preempt(ray, jobs, stop["signal"], on_stopped=commit_caches)
            if not ready:
                continue
            method, env_id, ckpt = jobs.pop(ready[0])
            try:
                row = ray.get(ready[0])
                landed(ready[0])
            except Exception as e:
                failed.append(f"attacks of {method} {env_id}")
                print(f"[sweep] attacks of {method} {env_id} failed: {one_line(e)}", flush=True)
                continue
            print(f"[sweep] attacked {method} {env_id}: worst {worst_text(row)}", flush=True)
            if a.git_commit:
                # the attacked copy, its row, and every trained attacker and Sarsa critic: a later suite with other
                # evaluation settings (or on another machine) reads them back instead of retraining
                stem = os.path.splitext(ckpt)[0]
                commit([os.path.join(out, "attacks", f"{method}__{env_id}{ext}") for ext in (".json", ".log")] +
                           [ckpt, f"{stem}_attacks.json", f"{stem}_attacks.md", os.path.join(out, "attacks", "attackers")],
                           f"study {os.path.basename(out)}: {method} {env_id} median seed attacked")
    ray.shutdown()
    import results

    results.main(["--sweep", out])
    if failed:
        print(f"[sweep] {len(failed)} failed: {', '.join(failed)} (fix and re-run: finished work is skipped)", flush=True)
        sys.exit(1)


def cluster_unreachable(address: str) -> Optional[str]:
    """Why --address cannot be a Ray cluster (Ray itself takes minutes to give up on a dead host:port); None when
    a head answers there, or for "auto" (Ray's own lookup says what it finds)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto":
        return None
    if not host or not port.isdigit():
        return f"--address {address!r}: expected host:port (or ray://host:port, or auto)"
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        return f"--address {address}: no Ray head answers there ({e.strerror or type(e).__name__})"
    return None


def worst_text(row: dict) -> str:
    w = row.get("worst")
    return f"{w['mean']:.1f} ({w['attack']})" if w else "– (no attack column)"


def one_line(e: Exception) -> str:
    """The last line of a (Ray-wrapped) error: the trial's own message."""
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def install_stop_handler() -> dict:
    """SIGTERM/SIGINT of the sweep: stop cleanly (see preempt); a second signal exits at once."""
    import signal

    stop = {"signal": None}

    def handler(signum, frame):
        if stop["signal"] is not None:
            os._exit(128 + signum)
        stop["signal"] = signum
        print(f"[sweep] {signal.Signals(signum).name}: asking every running trial to save and stop", flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


def preempt(ray, pending: dict, signum: int, grace_s: float = 120.0, on_stopped=None) -> None:
    """Interrupts the running trials (Ray raises KeyboardInterrupt in each, which the method scripts' SIGINT
    handler turns into: finish the step, save with the buffer, stop), waits for them, runs on_stopped (the progress
    commit), exits 128 + signum. A re-run resumes every trial from its checkpoint."""
    for ref in pending:
        ray.cancel(ref, force=False)
    ray.wait(list(pending), num_returns=len(pending), timeout=grace_s)
    ray.shutdown()
    try:
        if on_stopped is not None:
            on_stopped()
    finally:
        print(f"[sweep] stopped; {len(pending)} unfinished trial(s) resume from their checkpoints on a re-run",
              flush=True)
        sys.exit(128 + signum)


if __name__ == "__main__":
    main()
