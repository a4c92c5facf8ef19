"""wocar_ppo.py (WocaR-PPO): interval bounds are sound, the worst action minimises Q_w inside the policy's action
box, Q_w's target by hand, the q_weight schedules, smoke runs that really update (Hopper, Ant 111-dim), exact resume,
attacks on the checkpoint, the sweep's budgets."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn as nn

import wocar_ppo
from attacks import common
from conftest import assert_continued, assert_same_end, run_script
from test_ppo import TINY_PPO, TINY_PPO_CLI

CPU = torch.device("cpu")


def learner(**overrides):
    args = wocar_ppo.resolve_args(wocar_ppo.Args(env_id="Hopper-v4", hidden_sizes=(32, 32), **overrides))
    return wocar_ppo.Learner(args, 11, 3, -np.ones(3), np.ones(3), CPU, num_iterations=100)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_interval_bounds_contain_the_network_on_the_box(activation):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 32), activation(), nn.Linear(32, 32), activation(), nn.Linear(32, 4))
    center = torch.randn(5, 7)
    eps = 0.3
    low, high = wocar_ppo.interval_bounds(net, center - eps, center + eps)
    samples = center.unsqueeze(1) + eps * (2 * torch.rand(5, 4000, 7) - 1)
    corners = center.unsqueeze(1) + eps * torch.randint(0, 2, (5, 4000, 7)).float().mul(2).sub(1)
    with torch.no_grad():
        for points in (samples, corners):
            out = net(points)
            assert (out >= low.unsqueeze(1) - 1e-5).all() and (out <= high.unsqueeze(1) + 1e-5).all()
    assert (high - low > 0).all()
    zero_low, zero_high = wocar_ppo.interval_bounds(net, center, center)  # a point box is the point
    torch.testing.assert_close(zero_low, net(center).detach())
    torch.testing.assert_close(zero_high, net(center).detach())


def test_worst_action_stays_in_the_policy_box_and_lowers_q():
    lrn = learner()
    torch.manual_seed(1)
    obs = torch.randn(256, 11)
    eps = 0.1
    with torch.no_grad():
        low, high = wocar_ppo.interval_bounds(lrn.actor.mean, obs - eps, obs + eps)
    action = lrn.worst_action(obs, eps)
    assert (action >= low - 1e-6).all() and (action <= high + 1e-6).all()
    with torch.no_grad():
        mean_action = lrn.actor.mean(obs).clamp(low, high)
        assert (lrn.worst_q(obs, action) <= lrn.worst_q(obs, mean_action) + 1e-6).all()
        assert (lrn.worst_q(obs, action) < lrn.worst_q(obs, mean_action)).float().mean() > 0.9


@pytest.mark.parametrize("hidden", [(32,), (32, 32), (16, 24, 8)])
def test_hand_written_action_gradient_is_autograds_and_the_search_is_the_autograd_search(hidden):
    torch.manual_seed(2)
    net = wocar_ppo.mlp([11 + 3, *hidden, 1], output_gain=1.0)
    for p in net.parameters():  # not the init's zero biases: every term of the backward pass matters
        p.data.normal_(0, 0.5)
    obs, action = torch.randn(64, 11), torch.randn(64, 3).requires_grad_(True)
    (expected,) = torch.autograd.grad(net(torch.cat([obs, action], -1)).sum(), action)
    torch.testing.assert_close(wocar_ppo.action_gradient(net, obs, action.detach()), expected)
    with pytest.raises(TypeError, match="alternating Linear and Tanh"):
        wocar_ppo.action_gradient(nn.Sequential(nn.Linear(14, 8), nn.ReLU(), nn.Linear(8, 1)), obs, action.detach())
    lrn = learner()
    lrn.worst_q.net = net
    eps = 0.1
    with torch.no_grad():
        low, high = wocar_ppo.interval_bounds(lrn.actor.mean, obs - eps, obs + eps)
        searched = lrn.actor.mean(obs).clamp(low, high)
    step = (high - low) / lrn.args.worst_action_steps
    for _ in range(lrn.args.worst_action_steps):  # the reference's search, with autograd
        searched.requires_grad_(True)
        (grad,) = torch.autograd.grad(lrn.worst_q(obs, searched).sum(), searched)
        searched = torch.max(torch.min(searched.detach() - step * grad.sign(), high), low)
    torch.testing.assert_close(lrn.worst_action(obs, eps), searched)


def test_worst_q_target_matches_a_hand_computation(monkeypatch):
    """One epoch, one minibatch: the loss is mean((Q_w(s, a) - (r + gamma (1 - term) Q_w'(s', a_w(s'))))^2)."""
    lrn = learner(q_epochs=1, num_minibatches=1, num_steps=8)
    torch.manual_seed(2)
    rollout = wocar_ppo.Rollout(8, 11, 3, CPU)
    rollout.obs, rollout.next_obs = torch.randn(8, 11), torch.randn(8, 11)
    rollout.actions, rollout.rewards = torch.randn(8, 3), torch.randn(8)
    rollout.terminated = torch.tensor([0, 0, 1, 0, 0, 0, 1, 0], dtype=torch.float32)
    chosen = lambda obs, eps: torch.tanh(obs[:, :3])  # noqa: E731  (a stand-in a_w(s'), a function of s')
    monkeypatch.setattr(lrn, "worst_action", chosen)
    with torch.no_grad():
        q = lrn.worst_q(rollout.obs, rollout.actions)
        target = rollout.rewards + 0.99 * (1 - rollout.terminated) * \
            lrn.worst_q_target(rollout.next_obs, chosen(rollout.next_obs, 0.05))
    loss = lrn.worst_q_update(rollout, eps=0.05)
    torch.testing.assert_close(loss, (q - target).pow(2).mean())
    before = {k: v.clone() for k, v in lrn.worst_q_target.state_dict().items()}
    lrn.worst_q_update(rollout, eps=0.05)
    moved = [not torch.equal(before[k], v) for k, v in lrn.worst_q_target.state_dict().items()]
    assert any(moved)  # the Polyak target follows (tau 0.001)


def test_worst_action_radius_is_the_references_fixed_value_unless_scheduled():
    assert learner().worst_action_radius(0) == learner().worst_action_radius(90) == 0.01  # WocaR steps.py eps=0.01
    scheduled = learner(worst_action_eps=None)
    assert scheduled.worst_action_radius(0) == 0.0 and scheduled.worst_action_radius(90) == scheduled.reg_eps(90) > 0.05


def test_q_weight_schedules():
    assert learner().q_weight(50) == pytest.approx(0.8 * 0.5)  # Hopper: linear to 0.8
    walker = wocar_ppo.Learner(wocar_ppo.resolve_args(wocar_ppo.Args(env_id="Walker2d-v4", hidden_sizes=(32, 32))),
                               11, 3, -np.ones(3), np.ones(3), CPU, num_iterations=100)
    assert walker.q_weight(50) == pytest.approx((0.8 * 0.5) ** 3) and walker.q_weight(100) == pytest.approx(0.512)
    assert learner(q_weight_schedule="constant").q_weight(0) == 0.8


@pytest.mark.parametrize("env_id, obs_dim", [("Hopper-v4", 11), ("Ant-v4", 111)])
def test_smoke_run_really_updates(workdir, env_id, obs_dim):
    proc = run_script("wocar_ppo.py", "--env-id", env_id, "--total-timesteps", "256", "--run-name", "w",
                      *TINY_PPO_CLI, "--q-epochs", "2", "--worst-action-steps", "5", cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(workdir / "runs" / "w" / "model.pt", weights_only=True)
    assert ckpt["obs_dim"] == obs_dim and ckpt["global_step"] == 256
    for key in ("actor_optimizer", "critic_optimizer", "worst_q_optimizer"):
        assert ckpt[key]["state"][0]["step"] == 2 * 2 * 4, key  # 2 rollouts x 2 epochs x 4 minibatches
    victim = common.load_victim(str(workdir / "runs" / "w" / "model.pt"))
    assert victim.kind == "ppo"
    stats = common.rollout(victim, None, episodes=1, seed=0)
    assert len(stats.returns) == 1


def test_resume_continues_exactly(workdir, capsys):
    args = dict(env_id="Hopper-v4", total_timesteps=384, seed=3, q_epochs=2, worst_action_steps=5, **TINY_PPO)
    straight = wocar_ppo.train(wocar_ppo.Args(**args, run_name="straight", save_every=0))
    wocar_ppo.train(wocar_ppo.Args(**args, run_name="part", save_every=256, keep_checkpoints=True))
    resumed = wocar_ppo.train(wocar_ppo.Args(**args, run_name="resumed", save_every=0,
                                             resume="runs/part/model_step256.pt"))
    assert_continued(capsys.readouterr().out, "runs/part/model_step256.pt", 256)
    assert_same_end(straight, resumed, ("actor", "critic", "worst_q", "worst_q_target"))


def test_settings_and_sweep_budgets(tmp_path):
    import sweep

    a = wocar_ppo.resolve_args(wocar_ppo.Args(env_id="HalfCheetah-v4"))
    assert (a.q_lr, a.q_weight, a.q_weight_schedule, a.reg_coef, a.policy_lr, a.value_lr) == \
        (4e-4, 0.5, "linear", 0.1, 1e-4, 1e-3)
    over = sweep.trial_overrides("wocar_ppo", "Hopper-v4", 1, 0.1, str(tmp_path), 0.05, {})
    assert over["total_timesteps"] == round(2_000_000 * 0.1 / 2048) * 2048  # the paper's WocaR budget, 2M
    importlib.import_module("wocar_ppo").Args(**over)
