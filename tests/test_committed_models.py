"""Every model the studies committed stays readable by this attack suite: a checkpoint format change that strands
published victims (results/ZOO.md points users at them) fails here, not in a user's hands."""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import ROOT

from attacks.common import load_victim


def committed_victims() -> list[str]:
    """Tracked .pt files under results/ except the learned attackers (read through their victim's cache) and the
    buffer-less resume.pt of a study still running (read by its pinned training script)."""
    listed = subprocess.run(["git", "ls-files", "results/*.pt"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git work tree: the committed models are the tracked files")
    return [f for f in listed.stdout.split() if "/attackers/" not in f and not f.endswith("/resume.pt")]


def test_every_committed_model_loads_and_acts_within_its_bounds_with_a_finite_value():
    # one test, not one per file: a study committing meanwhile must not change what each xdist worker collects
    victims, failures = committed_victims(), []
    assert len(victims) >= 60
    for path in victims:
        try:
            victim = load_victim(os.path.join(ROOT, path))
            env = victim.make_env()
            obs, _ = env.reset(seed=0)
            obs_n = victim.normalize(obs).unsqueeze(0)
            action = victim.act(obs_n)[0].numpy()
            env.close()
            with torch.no_grad():
                value = victim.critic(obs_n, torch.as_tensor(action).unsqueeze(0)) if victim.kind == "sac" \
                    else victim.critic(obs_n)
            low, high = env.action_space.low - 1e-6, env.action_space.high + 1e-6
            if not (action.shape == env.action_space.shape and np.all(np.isfinite(action))
                    and np.all((action >= low) & (action <= high)) and torch.isfinite(value).all()):
                failures.append(f"{path}: action {action}, value {value}")
        except Exception as e:  # noqa: BLE001 - every model is checked, each failure named
            failures.append(f"{path}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)
