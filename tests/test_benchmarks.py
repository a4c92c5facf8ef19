"""The diagnostics under benchmarks/ that published numbers rest on."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import critic_check  # noqa: E402

SAC_FIXTURE = os.path.join(ROOT, "tests", "data", "sac_halfcheetah_30k.pt")
PPO_FIXTURE = os.path.join(ROOT, "tests", "data", "ppo_hopper_160k.pt")


def test_soft_returns_match_a_hand_computation():
    r, logp, alpha, gamma = [1.0, 2.0, 3.0], [-0.5, 0.25, 1.0], 0.2, 0.9
    g2 = 3.0
    g1 = 2.0 + gamma * (g2 - alpha * 1.0)
    g0 = 1.0 + gamma * (g1 - alpha * 0.25)  # the entropy bonus of the NEXT action, never of a_t itself
    assert np.allclose(critic_check.soft_returns(r, logp, alpha, gamma), [g0, g1, g2])


def test_trained_critic_tracks_the_returns_and_ppo_is_refused():
    row = critic_check.check(SAC_FIXTURE, episodes=1, horizon=300, seed=3)
    assert row["clean"]["pearson"] > 0.3  # a trained critic ranks states like their soft return
    assert row["pgd"]["mean_G"] < row["clean"]["mean_G"]  # PGD (minQ) hurts the fixture
    assert row["critic_attack_drop"] > 0  # and lowers the critic's own Q at the clean states
    with pytest.raises(critic_check.AttackError, match="SAC critic"):
        critic_check.check(PPO_FIXTURE, episodes=1, horizon=10, seed=0)
