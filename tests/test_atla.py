"""atla_ppo.py (ATLA-PPO, --pa: PA-ATLA-PPO): smoke runs that really update both players (Hopper, Ant 111-dim),
the alternation and the adversary's step count, the adversary's frozen normalizer and negated rewards, the PA
realisation, exact resume, and the attack suite (own adversary included) on the checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import atla_ppo
from attacks import common, valt_soft_adv
from conftest import assert_continued, assert_same_end, run_script
from test_ppo import TINY_PPO, TINY_PPO_CLI

CPU = torch.device("cpu")


@pytest.mark.parametrize("env_id, obs_dim, pa", [("Hopper-v4", 11, False), ("Ant-v4", 111, True)])
def test_smoke_run_alternates_and_counts_adversary_steps(workdir, env_id, obs_dim, pa):
    proc = run_script("atla_ppo.py", "--env-id", env_id, "--total-timesteps", "384", "--run-name", "a",
                      *TINY_PPO_CLI, *(["--pa"] if pa else []), cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(workdir / "runs" / "a" / "model.pt", weights_only=True)
    assert ckpt["obs_dim"] == obs_dim and ckpt["global_step"] == 384
    # 3 iterations, each: one agent rollout + update, one adversary rollout + update (2 epochs x 4 minibatches)
    assert ckpt["train_state"]["adversary_steps"] == 384
    for key in ("actor_optimizer", "critic_optimizer", "adversary_optimizer", "adversary_critic_optimizer"):
        assert ckpt[key]["state"][0]["step"] == 3 * 2 * 4, key
    assert ckpt["arch"]["adversary"] == ("atla_director_action" if pa else "atla_hardtanh_obs")
    out_dim = ckpt["act_dim"] if pa else obs_dim
    assert ckpt["adversary"]["log_std"].shape == (out_dim,)
    assert "(+384 adversary)" in proc.stdout


def test_settings_are_the_references(workdir):
    a = atla_ppo.resolve_args(atla_ppo.Args(env_id="Hopper-v4"))
    assert (a.adv_policy_lr, a.adv_value_lr, a.adv_ent_coef, a.adv_clip_coef) == (3e-3, 3e-5, 0.0, 0.2)
    assert (a.ent_coef, a.reg_coef, a.reg_sgld_steps, a.total_timesteps) == (0.01, 0.3, 2, 2441 * 2048)
    p = atla_ppo.resolve_args(atla_ppo.Args(env_id="Hopper-v4", pa=True))
    assert (p.adv_policy_lr, p.adv_value_lr, p.adv_ent_coef, p.adv_clip_coef) == (1e-2, 1e-3, 3e-4, 0.4)
    assert (p.reg_coef, p.reg_sgld_steps, p.pa_steps) == (0.3, 2, 1)
    assert atla_ppo.resolve_args(atla_ppo.Args(env_id="Ant-v4", pa=True)).total_timesteps == 4882 * 2048
    # the paper's Walker2d rows: plain "ATLA-PPO", "PA-ATLA-PPO +reg."
    assert atla_ppo.resolve_args(atla_ppo.Args(env_id="Walker2d-v4")).reg_coef == 0.0
    assert atla_ppo.resolve_args(atla_ppo.Args(env_id="Walker2d-v4", pa=True)).reg_coef == 0.1


def test_adversary_rollout_freezes_the_normalizer_and_negates_scaled_rewards(workdir, monkeypatch):
    """ATLA's adversary phase: normalizer_read_only (state and reward filters), reward -r."""
    seen = {}
    original = atla_ppo.Learner.update

    def capture(self, rollout, iteration, adversary=False):
        if adversary and "adv" not in seen:
            seen["adv"] = rollout.rewards.clone()
        return original(self, rollout, iteration, adversary)

    updates = []
    original_norm = atla_ppo.RunningNormalizer.update
    monkeypatch.setattr(atla_ppo.RunningNormalizer, "update", lambda self, x: (updates.append(1), original_norm(self, x)))
    monkeypatch.setattr(atla_ppo.Learner, "update", capture)
    out = atla_ppo.train(atla_ppo.Args(env_id="Hopper-v4", total_timesteps=128, seed=0, run_name="n", save_every=0,
                                       **TINY_PPO))
    assert out["adversary_steps"] == 128
    resets_in_agent_phase = len(updates) - 1 - 128  # the first reset, then one per agent step, plus episode resets
    assert 0 <= resets_in_agent_phase < 128  # the 128 adversary steps updated nothing
    assert (seen["adv"] <= 0).float().mean() > 0.9  # Hopper's rewards are mostly positive: the adversary's negated


def test_pa_realisation_stays_in_the_ball_and_ascends_the_directional_objective():
    args = atla_ppo.resolve_args(atla_ppo.Args(env_id="Hopper-v4", pa=True, pa_steps=5, hidden_sizes=(32, 32)))
    learner = atla_ppo.Learner(args, 11, 3, -np.ones(3), np.ones(3), CPU, num_iterations=10)
    torch.manual_seed(0)
    obs = torch.randn(256, 11)
    direction = torch.randn(256, 3)
    x = learner.perturb(obs, direction)
    assert ((x - obs).abs() <= args.attack_eps + 1e-6).all()

    def objective(z):
        with torch.no_grad():
            change = learner.actor.mean(z) - learner.actor.mean(obs)
            return torch.nn.functional.cosine_similarity(change, direction, dim=-1) + change.norm(dim=-1)

    uniform = obs + args.attack_eps * (2 * torch.rand_like(obs) - 1)
    assert (objective(x) > objective(uniform)).float().mean() > 0.9  # ascends (the reference's MuJoCo step descends)
    fgsm = atla_ppo.Learner(atla_ppo.resolve_args(atla_ppo.Args(env_id="Hopper-v4", pa=True, hidden_sizes=(32, 32))),
                            11, 3, -np.ones(3), np.ones(3), CPU, num_iterations=10)
    corner = fgsm.perturb(obs, direction) - obs  # the reference's single FGSM step: a corner of the ball around s
    torch.testing.assert_close(corner.abs(), torch.full_like(corner, fgsm.eps))
    sa = atla_ppo.Learner(atla_ppo.resolve_args(atla_ppo.Args(env_id="Hopper-v4", hidden_sizes=(32, 32))), 11, 3,
                          -np.ones(3), np.ones(3), CPU, num_iterations=10)
    u = 10 * torch.randn(256, 11)
    torch.testing.assert_close(sa.perturb(obs, u) - obs, sa.eps * u.clamp(-1, 1))  # SA-RL: eps * hardtanh(u)


@pytest.mark.parametrize("hidden", [(32,), (64, 64), (16, 24, 8)])
def test_hand_written_director_gradient_is_autograds_and_the_realisation_is_the_autograd_one(hidden):
    torch.manual_seed(3)
    net = atla_ppo.mlp([11, *hidden, 3], output_gain=1.0)
    for p in net.parameters():  # not the init's zero biases: every term of the backward pass matters
        p.data.normal_(0, 0.5)
    obs, u = torch.randn(128, 11), torch.randn(128, 3)
    with torch.no_grad():
        clean = net(obs)
    x = (obs + 0.01 * torch.randn_like(obs)).requires_grad_(True)
    change = net(x) - clean
    objective = torch.nn.functional.cosine_similarity(change, u, dim=-1, eps=1e-8) + change.norm(dim=-1)
    (expected,) = torch.autograd.grad(objective.sum(), x)
    # float32 rounding, amplified by 1/|c| near the start point
    torch.testing.assert_close(atla_ppo.director_gradient(net, x.detach(), clean, u), expected, rtol=1e-4, atol=1e-4)
    for steps in (1, 4):  # FGSM (the default) and PGD realisations equal the autograd search from the same start
        args = atla_ppo.resolve_args(atla_ppo.Args(env_id="Hopper-v4", pa=True, pa_steps=steps, hidden_sizes=hidden))
        learner = atla_ppo.Learner(args, 11, 3, -np.ones(3), np.ones(3), CPU, num_iterations=10)
        learner.actor.mean = net
        eps = learner.eps
        torch.manual_seed(4)
        realised = learner.perturb(obs, u)
        torch.manual_seed(4)
        z = obs + (eps / 10) * (2 * torch.rand_like(obs) - 1)
        for _ in range(steps):
            z.requires_grad_(True)
            change = net(z) - clean
            objective = torch.nn.functional.cosine_similarity(change, u, dim=-1, eps=1e-8) + change.norm(dim=-1)
            (grad,) = torch.autograd.grad(objective.sum(), z)
            z = obs + eps * grad.sign() if steps == 1 else (z.detach() + eps / steps * grad.sign()).clamp(obs - eps,
                                                                                                        obs + eps)
        torch.testing.assert_close(realised, z.detach())


@pytest.mark.parametrize("pa", [False, True])
def test_resume_continues_exactly(workdir, pa, capsys):
    common_args = dict(env_id="Hopper-v4", total_timesteps=384, seed=3, pa=pa, **TINY_PPO)
    straight = atla_ppo.train(atla_ppo.Args(**common_args, run_name="straight", save_every=0))
    atla_ppo.train(atla_ppo.Args(**common_args, run_name="part", save_every=256, keep_checkpoints=True))
    resumed = atla_ppo.train(atla_ppo.Args(**common_args, run_name="resumed", save_every=0,
                                           resume="runs/part/model_step256.pt"))
    assert resumed["global_step"] == 384 and resumed["adversary_steps"] == 384
    assert_continued(capsys.readouterr().out, "runs/part/model_step256.pt", 256)
    assert_same_end(straight, resumed, ("actor", "critic", "adversary", "adversary_critic"))


@pytest.mark.parametrize("pa", [False, True])
def test_attacks_on_atla_checkpoints_include_the_own_adversary(workdir, pa):
    out = atla_ppo.train(atla_ppo.Args(env_id="Hopper-v4", total_timesteps=256, seed=0, run_name="v", save_every=0,
                                       pa=pa, **TINY_PPO))
    victim = common.load_victim(out["save_path"])
    assert victim.kind == "ppo" and valt_soft_adv.has_adversary(victim)
    stats = common.rollout(victim, valt_soft_adv.OwnAdversaryAttacker(victim), episodes=1, seed=0)  # checks the ball
    assert len(stats.returns) == 1
    proc = run_script("attacks/eval_all.py", "--ckpt", out["save_path"], "--episodes", "1",
                      "--attacks", "natural,uniform,mad,pgd,valt_soft_adv", "--pgd-steps", "2", "--mad-steps", "2",
                      cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.load(open(out["save_path"].replace(".pt", "_attacks.json")))
    assert row["attacks"]["pgd"]["column"] == "PGD (minV)" and "valt_soft_adv" in row["attacks"]


def test_a_policy_step_that_underflows_the_ratio_is_not_called_divergence():
    """An ATLA Hopper run was stopped at step 980992 by a non-finite adversary/approx_kl: the
    adversary's (lr 3e-3, the reference's) log-ratio reached -168 on some samples, exp() underflowed to 0 and the
    old estimator (r - 1) - log r was inf while the loss and every parameter were finite."""
    args = atla_ppo.resolve_args(atla_ppo.Args(env_id="Hopper-v4", hidden_sizes=(16, 16), num_steps=64,
                                               num_minibatches=2, update_epochs=1, value_epochs=1))
    learner = atla_ppo.Learner(args, 11, 3, -np.ones(3), np.ones(3), CPU, num_iterations=10)
    torch.manual_seed(0)
    rollout = atla_ppo.Rollout(64, 11, 11, CPU)
    rollout.obs.normal_()
    rollout.actions.normal_()
    rollout.rewards.normal_()
    with torch.no_grad():
        rollout.log_probs.copy_(learner.adversary.log_prob(rollout.obs, rollout.actions))
    rollout.log_probs[:8] += 200.0  # these samples' ratio exp(-200) is 0 in float32
    logs = learner.update(rollout, 0, adversary=True)
    assert all(torch.isfinite(v).all() for v in logs.values()), logs
    assert logs["adversary/approx_kl"] > 20  # the step is still reported as a large one
