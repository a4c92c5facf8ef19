"""Shared test helpers: the repository root on sys.path, tiny-budget CLI runs in a temp folder."""
from __future__ import annotations

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Under pytest-xdist (README's test command: two workers), one torch thread per worker so the two share the cores
# instead of oversubscribing them; subprocesses inherit it through OMP_NUM_THREADS.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Tiny settings under which every method script really runs gradient updates in a few seconds.
TINY = ["--learning-starts", "200", "--batch-size", "32", "--hidden-sizes", "32", "32", "--buffer-size", "5000",
        "--eval-every", "0", "--eval-episodes", "1", "--log-every", "200", "--threads", "1"]


def assert_continued(stdout: str, path: str, step: int) -> None:
    """The resumed run restored its step count: a run that ignored --resume would train from step 0 and match the
    straight run bit for bit, so an exact-resume comparison needs this too."""
    assert f"[resume] continuing {path} at step {step}" in stdout, stdout[-2000:]


def assert_same_end(straight: dict, resumed: dict, nets: tuple[str, ...]) -> None:
    """Two runs' train() results ended in the same place, bit for bit: each named network and the evaluations."""
    import torch

    a, b = straight["learner"].state_dict(), resumed["learner"].state_dict()
    for net in nets:
        assert a[net] and a[net].keys() == b[net].keys(), net
        for key, p in a[net].items():
            torch.testing.assert_close(b[net][key], p, rtol=0, atol=0, msg=f"{net}.{key}")
    assert resumed["eval_returns"] == straight["eval_returns"]


def run_script(script: str, *args: str, cwd: str, timeout: int = 300, env: dict = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


class ChainEnv(gym.Env):
    """1-D toy task: observation = [position, step count]; terminates when position > 1.5, and a time
    limit truncates. Used to check termination-vs-truncation bootstrapping."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.pos, self.t = 0.0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = 0.0, 0
        return np.array([self.pos, self.t], np.float32), {}

    def step(self, action):
        self.pos += float(np.clip(action[0], -1, 1))
        self.t += 1
        return np.array([self.pos, self.t], np.float32), 1.0, self.pos > 1.5, False, {}


if "TestChain-v0" not in gym.registry:
    gym.register("TestChain-v0", entry_point=ChainEnv, max_episode_steps=6)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Runs write runs/ into a temp folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


FIXTURE = os.path.join(ROOT, "tests", "data", "sac_halfcheetah_30k.pt")  # see tests/data/README.md
PPO_FIXTURE = os.path.join(ROOT, "tests", "data", "ppo_hopper_160k.pt")


def fixture_states(n: int, seed: int = 0, path: str = FIXTURE):
    """(victim, common.visited_states of it: n normalized true states of its deterministic policy), cached per
    (n, seed, path). Default: the SAC HalfCheetah fixture."""
    key = (n, seed, path)
    if key not in _STATES:
        from attacks.common import load_victim, visited_states

        victim = load_victim(path)
        _STATES[key] = (victim, visited_states(victim, n, seed))
    return _STATES[key]


_STATES: dict = {}
