"""Reliability (every method script): a diverging run never replaces a good checkpoint, a preempted run saves
and resumes exactly, a failed write leaves the previous checkpoint intact, bad files are one clear line."""
from __future__ import annotations

import errno
import importlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import sac
from conftest import ROOT, TINY, assert_continued, assert_same_end, run_script
from test_resume import EXTRA
from test_sac import TINY_ARGS

SCRIPTS = list(EXTRA)


def error_lines(stderr: str) -> list[str]:
    """Our own stderr lines (MuJoCo prints its simulator warnings there too)."""
    return [l for l in stderr.splitlines() if l.strip() and not l.startswith("WARNING:")]


def test_divergence_stops_with_one_line_and_keeps_the_good_checkpoint(workdir):
    """The issue's example: lr 1e12 diverges to NaN. Exit 3, one line naming the losses and the step, and the
    checkpoint already at the save path (a good one from an earlier run) is not replaced."""
    good = run_script("sac.py", "--env-id", "Hopper-v4", "--total-timesteps", "300", "--save-path", "nan/model.pt",
                      *TINY, cwd=str(workdir))
    assert good.returncode == 0, good.stderr[-2000:]
    before = torch.load(workdir / "nan" / "model.pt", weights_only=True)
    proc = run_script("sac.py", "--env-id", "Hopper-v4", "--total-timesteps", "3000", "--learning-starts", "500",
                      "--q-lr", "1e12", "--policy-lr", "1e12", "--save-every", "1000", "--save-path", "nan/model.pt",
                      "--threads", "1", "--hidden-sizes", "64", "64", "--eval-episodes", "1", cwd=str(workdir))
    assert proc.returncode == 3, proc.stdout[-1000:] + proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "non-finite losses/critic_loss" in lines[0] and "at or before step" in lines[0]
    assert "Traceback" not in proc.stderr
    after = torch.load(workdir / "nan" / "model.pt", weights_only=True)
    assert after["global_step"] == before["global_step"] == 300
    assert all(torch.isfinite(v).all() for v in after["actor"].values())


@pytest.mark.parametrize("module_name", ["sac", "sac_valt_soft"])
def test_save_refuses_non_finite_parameters(workdir, module_name):
    """Even without a non-finite loss, save() checks every parameter before writing."""
    mod = importlib.import_module(module_name)
    args = mod.Args(env_id="Hopper-v4", total_timesteps=300, run_name="p", save_every=250, **TINY_ARGS,
                    **EXTRA[module_name])
    original = mod.Learner.update

    def poisoned(self, *a, **k):
        logs = original(self, *a, **k)
        if a[-1] == 250:  # global_step of the save: its losses were finite, only the parameters are not
            with torch.no_grad():
                next(self.actor.parameters()).fill_(float("nan"))
        return logs

    mod.Learner.update = poisoned
    try:
        with pytest.raises(mod.Diverged, match=r"non-finite actor\.trunk"):
            mod.train(args)
    finally:
        mod.Learner.update = original
    assert not os.path.exists(workdir / "runs" / "p" / "model.pt")


def test_sigterm_saves_and_resume_is_bit_identical(workdir, capsys):
    """SIGTERM mid-run: the step finishes, a checkpoint (with the buffer) is written, exit 143 with the resume
    command; resuming it gives exactly the uninterrupted run."""
    common = dict(env_id="Hopper-v4", total_timesteps=900, seed=5, **TINY_ARGS)
    cli = ["--env-id", "Hopper-v4", "--total-timesteps", "900", "--seed", "5", *TINY, "--log-every", "50",
           "--save-every", "0", "--save-buffer", "--save-path", "term/model.pt"]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sac.py"), *cli], cwd=str(workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    for line in proc.stdout:  # wait until it is updating
        if "step       400/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM: finishing this step" in out and "--resume term/model.pt" in err
    saved = torch.load(workdir / "term" / "model.pt", weights_only=True)
    assert 400 <= saved["global_step"] < 900 and os.path.isfile(workdir / "term" / "model_buffer.pt")
    straight = sac.train(sac.Args(**common, run_name="straight", save_every=0))
    resumed = sac.train(sac.Args(**common, run_name="resumed", save_every=0, resume="term/model.pt"))
    assert_continued(capsys.readouterr().out, "term/model.pt", saved["global_step"])
    assert_same_end(straight, resumed, ("actor", "critic", "critic_target"))


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "model.pt")
    sac.atomic_save({"checkpoint_format": 1, "actor": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def disk_full(obj, f, *a, **k):  # writes part of the temp file, then the disk is full
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(sac.UserError, match="No space left on device.*previous file there is intact"):
        sac.atomic_save({"checkpoint_format": 1, "actor": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["actor"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model.pt"]  # no temp file left behind


def test_unwritable_save_path_is_one_clear_line(workdir):
    proc = run_script("sac.py", "--env-id", "Hopper-v4", "--total-timesteps", "250", "--save-path",
                      "/dev/full/model.pt", *TINY, cwd=str(workdir))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "cannot write /dev/full/model.pt" in lines[0]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    proc = run_script("sac.py", "--env-id", "Hopper-v4", "--total-timesteps", "300", "--save-path", "run/model.pt",
                      "--save-buffer", *TINY, cwd=str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable checkpoint"),
    ("slim", "is a slim checkpoint"),
    ("other_env", "this run is sac on Hopper-v4"),
    ("buffer_truncate", "not a readable replay buffer"),
    ("buffer_other", "does not match this run's buffer"),
])
def test_bad_files_on_resume_are_one_clear_line(saved_run, tmp_path, damage, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(saved_run / "run", run)
    ckpt, buf = run / "model.pt", run / "model_buffer.pt"
    env_id = "Hopper-v4"
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    elif damage == "slim":
        from attacks.common import slim_checkpoint

        slim_checkpoint(str(ckpt), str(ckpt))
    elif damage == "other_env":
        env_id = "Walker2d-v4"
        message = "this run is sac on Walker2d-v4"
    elif damage == "buffer_truncate":
        buf.write_bytes(buf.read_bytes()[:3000])
    elif damage == "buffer_other":
        state = torch.load(buf, weights_only=True)
        state["obs"] = state["obs"][:, :5]  # a buffer of another task's observation size
        torch.save(state, buf)
    proc = run_script("sac.py", "--env-id", env_id, "--total-timesteps", "400", "--resume", str(ckpt), *TINY,
                      cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and message in lines[0], lines


def test_the_eta_counts_the_rate_after_the_random_action_warm_up(monkeypatch, capsys):
    """1000 warm-up steps take 1 s, every later 1000 take 10 s: at step 3000 of 10000 the ETA is 7000 / 100 steps/s
    = 1.2 min; the cumulative rate (3000 / 21 s) would say 0.8 min."""
    args = sac.resolve_args(sac.Args(env_id="HalfCheetah-v4", total_timesteps=10_000, learning_starts=1000,
                                     log_every=1000, eval_every=0, save_every=0, save_path="unused.pt"))
    run, clock = sac.Run(args), [0.0]
    monkeypatch.setattr(sac.time, "time", lambda: clock[0])
    run.start, run.writer = (0.0, 0), type("Writer", (), {"add_scalar": lambda *a: None})()
    for step, seconds in [(1000, 1.0), (2000, 11.0), (3000, 21.0)]:
        clock[0] = seconds
        run.periodic(sac.TrainState(global_step=step), step - 1000, {}, None, progress=lambda: "")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "step      3000/10000 | sps  100.0" in last and last.endswith("eta    1.2 min"), last
