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
    files = subprocess.run(["git", "ls-files", "results/*.pt"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    return [f for f in files if "/attackers/" not in f and not f.endswith("/resume.pt")]


VICTIMS = committed_victims()


def test_the_studies_committed_models():
    assert len(VICTIMS) >= 60 and any("halfcheetah_1m/models/checkpoints" in f for f in VICTIMS)


@pytest.mark.parametrize("path", VICTIMS)
def test_a_committed_model_loads_and_acts_within_its_bounds(path):
    victim = load_victim(os.path.join(ROOT, path))
    env = victim.make_env()
    obs, _ = env.reset(seed=0)
    action = victim.act(victim.normalize(obs).unsqueeze(0))[0].numpy()
    env.close()
    assert action.shape == env.action_space.shape and np.all(np.isfinite(action))
    assert np.all(action >= env.action_space.low - 1e-6) and np.all(action <= env.action_space.high + 1e-6)
    with torch.no_grad():
        value = victim.critic(victim.normalize(obs).unsqueeze(0), torch.as_tensor(action).unsqueeze(0)) \
            if victim.kind == "sac" else victim.critic(victim.normalize(obs).unsqueeze(0))
    assert torch.isfinite(value).all()
