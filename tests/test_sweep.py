"""sweep.py on Ray: a trial whose worker is killed (-9) is retried and resumes from its checkpoint;
a re-run skips what is finished; results.py aggregates."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

import sweep

# Tests that start Ray run one after another on one pytest-xdist worker (--dist loadgroup): two Ray instances
# starting at once on one machine compete for its ports and its /tmp/ray session.
pytestmark = pytest.mark.xdist_group("ray")


def test_sweep_json_keeps_the_union_of_grids_and_refuses_a_changed_setting(tmp_path):
    path = str(tmp_path / "sweep.json")
    base = {"methods": ["sac", "sac_ppo"], "envs": ["HalfCheetah-v4"], "seeds": 3, "budget_scale": 0.05,
            "train_args": "{}", "attacks": "all", "attack_args": "--search quick", "episodes": 20,
            "seed_attacks": "natural,pgd", "seed_attack_args": "", "local_cpus": 2}
    sweep.record_sweep(path, base, ["sweep.py", "first"])
    # a later invocation runs part of the grid (its own methods, other CPUs, spacing of the same arguments)
    sweep.record_sweep(path, {**base, "methods": ["robust_sac", "sac"], "seeds": 2, "local_cpus": 1,
                              "train_args": "{ }", "attack_args": " --search  quick"}, ["sweep.py", "second"])
    record = json.load(open(path))
    assert record["methods"] == ["sac", "sac_ppo", "robust_sac"] and record["seeds"] == 3
    assert record["invocations"] == [["sweep.py", "first"], ["sweep.py", "second"]]
    for key, value in (("train_args", '{"reg_coef": 0}'), ("budget_scale", 0.1), ("attack_args", "--search paper")):
        with pytest.raises(ValueError, match=f"--{key.replace('_', '-')}"):
            sweep.record_sweep(path, {**base, key: value}, ["sweep.py", "third"])
    assert len(json.load(open(path))["invocations"]) == 2  # a refused invocation leaves no trace
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--out", str(tmp_path), "--methods", "sac",
                           "--budget-scale", "0.5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "its own --out" in proc.stderr and "Traceback" not in proc.stderr


def test_suite_bookkeeping_finds_the_attacked_trial_and_reuses_identical_per_seed_attacks():
    for ckpt in ("o/attacks/sac__Hopper-v4__s2.pt", "o/models/sac__Hopper-v4__s2.pt", "o/trials/sac__Hopper-v4__s2/model.pt"):
        assert sweep.attacked_trial({"ckpt": ckpt}) == "sac__Hopper-v4__s2"
    args = lambda **kw: argparse.Namespace(**{"attacks": "pgd,natural", "seed_attacks": "natural, pgd",  # noqa: E731
                                              "attack_args": "", "seed_attack_args": "", **kw})
    assert sweep.same_attacks(args())
    assert not sweep.same_attacks(args(attacks="all", seed_attacks="all"))  # "all" adds the own adversary
    assert not sweep.same_attacks(args(attacks="natural,pgd,rs"))
    assert not sweep.same_attacks(args(attack_args="--pgd-steps 20"))


def test_median_seed_and_scaled_schedules():
    runs = [{"seed": s, "eval_mean": m} for s, m in [(1, 5.0), (2, 1.0), (3, 9.0), (4, 3.0)]]
    assert sweep.median_seed(runs)["seed"] == 4  # lower median of 1, 3, 5, 9
    over = sweep.trial_overrides("sac_valt_eps", "HalfCheetah-v4", 2, 0.05, "/tmp/x", 0.1, {})
    assert over["total_timesteps"] == 50_000 and over["worst_rate_remain_steps"] == 40_000
    assert (over["reg_eps_start_step"], over["reg_eps_end_step"]) == (5_000, 40_000)
    assert over["save_every"] == 5_000 and over["save_buffer"]


def test_killed_worker_resumes_from_checkpoint_and_rerun_skips(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "--methods", "sac", "--envs", "Hopper-v4", "--seeds", "1",
           "--budget-scale", "0.006", "--out", str(out), "--local-cpus", "1", "--save-every-frac", "0.1",
           "--attacks", "natural,uniform", "--seed-attacks", "natural,uniform", "--episodes", "1",
           "--train-args", json.dumps({"hidden_sizes": [32, 32], "batch_size": 32, "eval_episodes": 1,
                                       "buffer_size": 5000})]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    trial = out / "trials" / "sac__Hopper-v4__s1"
    killed_at, deadline = None, time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if not (trial / "model.pt").is_file() or not (trial / "attempts.jsonl").is_file():
            continue
        step = torch.load(trial / "model.pt", map_location="cpu", weights_only=True)["global_step"]
        if step >= 600:
            pid = json.loads((trial / "attempts.jsonl").read_text().splitlines()[0])["pid"]
            os.kill(pid, signal.SIGKILL)
            killed_at = step
            break
    assert killed_at is not None, "the trial never wrote a checkpoint"
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    attempts = [json.loads(line) for line in (trial / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and attempts[0]["pid"] != attempts[1]["pid"]
    assert attempts[0]["start_step"] == 0
    assert attempts[1]["start_step"] >= killed_at, "the retry must resume from the checkpoint, not from scratch"
    done = json.loads((trial / "done.json").read_text())
    assert done["global_step"] == 3000 and done["start_step"] == attempts[1]["start_step"]
    assert f"continuing {trial / 'model.pt'} at step {attempts[1]['start_step']}" in (trial / "train.log").read_text()
    assert "resumed at step" in output
    table = (out / "results" / "table.md").read_text()
    assert "SAC" in table and "Uniform" in table and "-512 ± 67" not in table  # Hopper's paper number, not HC's
    assert "2979 ± 1" in table
    # every seed: a slim model (no optimizer, no target critic) and its per-seed attacks; the per-seed CSV
    slim = torch.load(out / "models" / "sac__Hopper-v4__s1.pt", weights_only=True)
    assert slim["slim"] and "actor_optimizer" not in slim and "critic" in slim and "normalizer" in slim
    seed_row = json.loads((out / "models" / "sac__Hopper-v4__s1_attacks.json").read_text())
    assert set(seed_row["attacks"]) == {"natural", "uniform"} and seed_row["worst"]["attack"] == "uniform"
    assert "sac,Hopper-v4,1," in (out / "results" / "per_seed.csv").read_text()

    again = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "finished earlier, skipped" in again.stdout and "attacks finished earlier, skipped" in again.stdout
    assert len((trial / "attempts.jsonl").read_text().splitlines()) == 2  # nothing re-trained


def test_a_ppo_family_sweep_trains_attacks_and_tabulates(tmp_path):
    """The PPO rows through the same machinery: whole rollouts, slim PPO-kind models, PGD (minV) per seed, the
    paper's Hopper PPO number in the table."""
    out = tmp_path / "sweep"
    small = {"num_steps": 256, "num_minibatches": 4, "update_epochs": 1, "value_epochs": 1, "hidden_sizes": [16, 16],
             "eval_episodes": 1}
    cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "--methods", "ppo", "--envs", "Hopper-v4", "--seeds", "1",
           "--budget-scale", "0.0005", "--out", str(out), "--local-cpus", "1", "--attacks", "natural,pgd,uniform",
           "--seed-attacks", "natural,pgd", "--episodes", "1", "--attack-args", "--pgd-steps 2",
           "--seed-attack-args", "--pgd-steps 2", "--train-args", json.dumps(small)]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    done = json.loads((out / "trials" / "ppo__Hopper-v4__s1" / "done.json").read_text())
    assert done["global_step"] == 2048  # 5M x 0.0005 = 2500 -> one whole 2048-step default rollout
    slim = torch.load(out / "models" / "ppo__Hopper-v4__s1.pt", weights_only=True)
    assert slim["slim"] and slim["arch"]["critic"] == "state_value" and "actor_optimizer" not in slim
    row = json.loads((out / "models" / "ppo__Hopper-v4__s1_attacks.json").read_text())
    assert row["attacks"]["pgd"]["column"] == "PGD (minV)"
    suite = json.loads((out / "attacks" / "ppo__Hopper-v4.json").read_text())  # the median seed's suite
    assert [n for n, c in suite["attacks"].items() if "reused_from" in c] == ["natural", "pgd"]  # from its seed row
    assert suite["attacks"]["pgd"]["returns"] == row["attacks"]["pgd"]["returns"] and "mean" in suite["attacks"]["uniform"]
    table = (out / "results" / "table.md").read_text()
    assert "| PPO |" in table and "871 ± 146" in table


def test_progress_commit_tracks_a_ppo_trials_resume_checkpoint_so_a_fresh_clone_continues(tmp_path, capsys):
    """A PPO-family trial cut at a session's end: its resume checkpoint is committed (despite .gitignore), again only
    when it changed, and a clone holds the latest one; a SAC trial's (buffer-sized) resume state is never committed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *cmd, cwd=repo: subprocess.run(["git", *cmd], cwd=cwd, check=True, capture_output=True,  # noqa: E731
                                                text=True).stdout
    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (repo / ".gitignore").write_text("results/*/trials/*/model*.pt\n")
    git("add", ".gitignore")
    git("commit", "-q", "-m", "init")
    out = repo / "results" / "study"
    names = ["ppo__Hopper-v4__s1", "sac__Hopper-v4__s1"]
    for name in names:
        trial = out / "trials" / name
        trial.mkdir(parents=True)
        torch.save({"global_step": 4096}, trial / "model.pt")
        (trial / "train.log").write_text("step 4096\n")
    ppo_ckpt = out / "trials" / names[0] / "model.pt"
    committed: dict = {}
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nexit 1\n")  # a commit that fails: nothing recorded, nothing left staged
    hook.chmod(0o755)
    assert sweep.commit_progress(str(out), names, committed, repo=str(repo)) == [] and committed == {}
    assert git("diff", "--cached", "--name-only") == ""
    hook.unlink()
    assert sweep.commit_progress(str(out), names, committed, repo=str(repo)) == [names[0]]
    files = git("ls-files").split()
    assert f"results/study/trials/{names[0]}/model.pt" in files and f"results/study/trials/{names[0]}/train.log" in files
    assert not any(f.startswith(f"results/study/trials/{names[1]}") for f in files)
    assert "in progress (step 4096)" in git("log", "-1", "--format=%s")
    assert sweep.commit_progress(str(out), names, committed, repo=str(repo)) == []  # unchanged: no new commit
    torch.save({"global_step": 8192}, ppo_ckpt)
    os.utime(ppo_ckpt, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert sweep.commit_progress(str(out), names, committed, repo=str(repo)) == [names[0]]
    git("clone", "-q", str(repo), str(tmp_path / "clone"), cwd=tmp_path)
    cloned = tmp_path / "clone" / "results" / "study" / "trials" / names[0] / "model.pt"
    assert torch.load(cloned, weights_only=True)["global_step"] == 8192
    # a re-run of the sweep meets the committed checkpoint of a trial still queued, while other files are modified:
    # nothing to commit for it is success, not a failure reported (and retried) every progress period
    (repo / ".gitignore").write_text("results/*/trials/*/model*.pt\nother\n")
    fresh: dict = {}
    capsys.readouterr()  # the failing hook above printed its failure
    assert sweep.commit_progress(str(out), names, fresh, repo=str(repo)) == [names[0]] and names[0] in fresh
    assert "failed" not in capsys.readouterr().out
    assert str(ppo_ckpt) in sweep.trial_files(str(out), names[0], repo=str(repo))  # the finish commit takes it along


def test_a_long_run_keeps_its_state_outside_the_tree_and_a_fresh_machine_continues_from_the_committed_checkpoint(
        tmp_path):
    """--state-dir holds a SAC trial's full checkpoint and buffer; stopping the sweep (SIGTERM) saves every running
    trial and commits the checkpoint without its buffer (trials/<name>/resume.pt); a machine without the state dir
    resumes from it with an empty buffer (recorded), slim models land every --slim-every steps, and the finished
    trial's resume.pt is removed; the stopped machine resumes from its state dir with the buffer restored."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *cmd: subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True,  # noqa: E731
                                      text=True).stdout
    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    out, state = repo / "results" / "study", tmp_path / "state"
    name = "sac__Hopper-v4__s1"
    cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "--methods", "sac", "--envs", "Hopper-v4", "--seeds", "1",
           "--budget-scale", "0.006", "--out", str(out), "--local-cpus", "1", "--save-every-frac", "0.1",
           "--skip-attacks", "--git-commit", "--state-dir", str(state), "--slim-every", "600",
           "--train-args", json.dumps({"hidden_sizes": [32, 32], "batch_size": 32, "eval_episodes": 1,
                                       "buffer_size": 5000})]
    # a local sweep starts a Ray of its own even where the environment names another cluster (here: none there)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_ADDRESS": "127.0.0.1:1"}
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    full = state / "study" / name / "model.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not (full.is_file() and sweep.saved_step(str(full)) >= 900):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "resume from their checkpoints on a re-run" in output
    assert (state / "study" / name / "model_buffer.pt").is_file() and not (out / "trials" / name / "model.pt").exists()
    saved = sweep.saved_step(str(full))
    assert "SIGINT: finishing this step, then saving" in (out / "trials" / name / "train.log").read_text()
    assert not (out / "trials" / name / "done.json").exists()
    assert f"in progress (step {saved})" in git("log", "--format=%s")
    committed = git("ls-files").split()
    assert f"results/study/trials/{name}/resume.pt" in committed
    full_state, resume = (torch.load(p, weights_only=True) for p in (full, out / "trials" / name / "resume.pt"))
    assert resume["global_step"] == saved and resume["critic"]["weights.1"].dtype == torch.bfloat16
    assert resume["critic_target"]["weights.1"] is resume["critic"]["weights.1"]  # one copy, read back as one
    assert full_state["actor_optimizer"]["state"] and resume["actor_optimizer"]["state"] == {}  # moments afresh
    assert resume["critic_optimizer"]["param_groups"] == full_state["critic_optimizer"]["param_groups"]
    assert torch.equal(resume["actor"]["trunk.2.weight"], full_state["actor"]["trunk.2.weight"].bfloat16())  # 32 x 32
    assert resume["actor"]["trunk.0.bias"].dtype == torch.float32  # under 1024 values: exact
    assert torch.equal(resume["train_state"]["torch_rng"], full_state["train_state"]["torch_rng"])
    assert torch.equal(resume["normalizer"]["mean"], full_state["normalizer"]["mean"])
    assert f"results/study/models/checkpoints/{name}_step600.pt" in committed
    assert json.loads((out / "sweep.json").read_text())["code"][0]["dir"] == ROOT

    clone = tmp_path / "clone"  # a fresh machine: the repository as committed, no state dir
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    for who in ("user.email", "user.name"):
        subprocess.run(["git", "config", who, "t"], cwd=clone, check=True)
    cmd2 = [c.replace(str(out), str(clone / "results" / "study")).replace(str(state), str(tmp_path / "state2"))
            for c in cmd]
    again = subprocess.run(cmd2, cwd=str(tmp_path), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    trial = clone / "results" / "study" / "trials" / name
    attempt = json.loads((trial / "attempts.jsonl").read_text().splitlines()[-1])
    assert attempt["start_step"] == saved and attempt["replay_buffer"] == "refilled from empty"
    assert f"resumed at step {saved}" in again.stdout
    log = (trial / "train.log").read_text()
    assert f"continuing {trial / 'resume.pt'} at step {saved}" in log and "refilling from empty" in log
    assert json.loads((trial / "done.json").read_text())["global_step"] == 3000
    snaps = sorted(os.listdir(clone / "results" / "study" / "models" / "checkpoints"))
    assert snaps == [f"{name}_step{s}.pt" for s in (1200, 1800, 2400, 3000, 600)]
    tracked = subprocess.run(["git", "ls-files"], cwd=clone, capture_output=True, text=True).stdout.split()
    assert f"results/study/trials/{name}/resume.pt" not in tracked and not (trial / "resume.pt").exists()
    assert f"results/study/trials/{name}/done.json" in tracked

    # the machine that stopped, the same command again: its full checkpoint and buffer from the state dir
    here = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, env=env, timeout=300)
    assert here.returncode == 0, here.stdout[-2000:] + here.stderr[-2000:]
    attempt = json.loads((out / "trials" / name / "attempts.jsonl").read_text().splitlines()[-1])
    assert attempt["start_step"] == saved and attempt["replay_buffer"] == "restored"
    assert json.loads((out / "trials" / name / "done.json").read_text())["global_step"] == 3000


def test_an_unreachable_cluster_address_is_one_line_at_once(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "--methods", "sac", "--envs", "Hopper-v4", "--seeds", "1",
           "--out", str(tmp_path / "s"), "--address", "127.0.0.1:1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no Ray head answers there" in proc.stderr and "Traceback" not in proc.stderr
    assert sweep.cluster_unreachable("head:notaport").startswith("--address 'head:notaport': expected host:port")


@pytest.mark.parametrize("kind", ["path", "pyarrow"])
def test_storage_round_trips_a_trial_through_a_path_and_a_pyarrow_filesystem(tmp_path, kind):
    """sweep.Storage, the study folder every node reaches: the same calls on a local path and through pyarrow.fs (its
    in-memory mock filesystem stands in for s3:// or gs://, which no test machine reaches)."""
    import sweep

    store = sweep.Storage(str(tmp_path / "store") if kind == "path" else "mock:///studies/demo")
    trial = tmp_path / "trial"
    (trial / "runs").mkdir(parents=True)
    for name, text in [("model.pt", "ckpt"), ("model_buffer.pt", "buffer"), ("done.json", "{}"), ("runs/ev", "e")]:
        (trial / name).write_text(text)
    (trial / "model.pt.tmp.123").write_text("half written")  # a writer's temp file never travels
    sent: dict = {}
    store.put_tree(str(trial), "trials/t", sent, last=("done.json",))
    assert store.exists("trials/t/done.json") and not store.exists("trials/t/nope")
    assert store.files("trials/t") == ["done.json", "model.pt", "model_buffer.pt", "runs/ev"]
    assert store.files("trials/t/model.pt") == [""] and store.files("trials/missing") == []
    back = tmp_path / "back"
    written = store.get("trials/t", str(back), skip=("_buffer.pt",))
    assert sorted(os.path.relpath(p, back) for p in written) == ["done.json", "model.pt", os.path.join("runs", "ev")]
    assert (back / "model.pt").read_text() == "ckpt" and (back / "runs" / "ev").read_text() == "e"
    uploads = []
    put = store.put
    store.put = lambda local, rel: uploads.append(rel) or put(local, rel)
    time.sleep(0.01)
    (trial / "model.pt").write_text("ckpt 2")
    store.put_tree(str(trial), "trials/t", sent, last=("done.json",))
    assert uploads == ["trials/t/model.pt"]  # only what changed since the last pass
    store.get("trials/t/model.pt", str(back / "model.pt"))
    assert (back / "model.pt").read_text() == "ckpt 2"
    store.remove("trials/t/runs/ev")
    store.remove("trials/t/runs/ev")  # gone already: nothing to do
    assert store.files("trials/t") == ["done.json", "model.pt", "model_buffer.pt"]
    assert sweep.storage_problem(store.uri) is None  # the driver's probe: a file in and out
    assert "Unrecognized filesystem type" in sweep.storage_problem("unknown-scheme://bucket/x")  # one line, no traceback


def test_slim_at_keeps_readings_between_the_slim_every_ones_and_deletes_every_other_kept_checkpoint(tmp_path):
    """A kept checkpoint at a --slim-every multiple or a --slim-at step becomes a slim model; every kept copy (and its
    buffer) is deleted; an off-grid, late, malformed or PPO --slim-at is one line before anything is recorded."""
    out, name, state = tmp_path / "study", "sac__HalfCheetah-v4__s1", tmp_path / "state"
    folder = state / "study" / name
    fixture = open(os.path.join(ROOT, "tests", "data", "sac_halfcheetah_30k.pt"), "rb").read()

    def keep(*steps):
        folder.mkdir(parents=True, exist_ok=True)
        for step in steps:
            for suffix in ("", "_buffer"):
                (folder / f"model_step{step}{suffix}.pt").write_bytes(fixture)

    keep(50, 100, 150, 200)
    written = sweep.snapshot_models(str(out), [name], 100, str(state), frozenset({150}))
    assert sorted(os.path.basename(w) for w in written) == [f"{name}_step{s}.pt" for s in (100, 150, 200)]
    assert torch.load(written[0], weights_only=True)["slim"] and os.listdir(folder) == []
    keep(250, 300, 350)  # --slim-at alone (--slim-every 0)
    written = sweep.snapshot_models(str(out), [name], 0, str(state), frozenset({300}))
    assert [os.path.basename(w) for w in written] == [f"{name}_step300.pt"] and os.listdir(folder) == []
    for args, says in ((["--slim-at", "650000,x"], "expected comma-separated step counts"),
                       (["--slim-at", "-5"], "steps must be positive"),
                       (["--slim-at", "1234"], "--slim-at 1234 is not a multiple of sac__Hopper-v4__s1's checkpoint"),
                       (["--slim-every", "1234"], "--slim-every 1234 is not a multiple of"),
                       (["--slim-at", "5000000"], "sac__Hopper-v4__s1 ends at"),
                       (["--slim-at", "50000", "--methods", "sac", "ppo"], "SAC-family methods only (ppo")):
        study = tmp_path / "s"
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--methods", "sac", "--envs",
                               "Hopper-v4", "--out", str(study), "--local-cpus", "1", *args],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-800:]
        assert not (study / "sweep.json").exists()  # refused before the invocation is recorded
