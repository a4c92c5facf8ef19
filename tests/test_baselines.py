"""robust_sac.py (SA regulariser) and sac_ppo.py (alternating PPO adversary)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import robust_sac
import sac_ppo
from conftest import TINY, run_script

CPU = torch.device("cpu")


def robust_learner(**overrides):
    args = robust_sac.Args(hidden_sizes=(32, 32), attack_eps=0.2, reg_coef=10.0, reg_eps_start_step=0,
                           reg_eps_end_step=100)
    for k, v in overrides.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    learner = robust_sac.Learner(args, 6, 3, -np.ones(3), np.ones(3), CPU)
    with torch.no_grad():  # a confident policy, as after training
        learner.actor.log_std.bias.fill_(-0.5)
    return learner


@pytest.mark.parametrize("distance", ["mse", "kl"])
def test_sgld_maximiser_inside_ball_and_increases_distance(distance, monkeypatch):
    learner = robust_learner(reg_distance=distance)
    obs = torch.randn(256, 6)
    captured = {}
    original = learner.policy_distance

    def spy(reference, obs_tilde):
        captured.setdefault("points", []).append(obs_tilde.detach().clone())
        return original(reference, obs_tilde)

    monkeypatch.setattr(learner, "policy_distance", spy)
    torch.manual_seed(1)
    reg = learner.sa_regularizer(obs, 0.2)
    start, final = captured["points"][0], captured["points"][-1]  # SGLD's start and its maximiser
    assert (final - obs).abs().max() <= 0.2 + 1e-6
    with torch.no_grad():
        ref = learner.actor(obs)
        d_start, d_final = original(ref, start), original(ref, final)
    assert d_final.mean() > 1.5 * d_start.mean()
    assert reg.item() == pytest.approx(d_final.mean().item(), rel=1e-5)
    reg.backward()
    assert learner.actor.mean.weight.grad is not None, "the regulariser must train the actor"


def test_regulariser_vanishes_at_zero_radius_and_ramps():
    learner = robust_learner(reg_eps_start_step=100, reg_eps_end_step=300)
    obs = torch.randn(64, 6)
    assert learner.sa_regularizer(obs, 0.0).item() == 0.0
    assert learner.reg_eps(100) == 0.0 and learner.reg_eps(200) == pytest.approx(0.1) and learner.reg_eps(400) == 0.2
    # the update skips the term (and its cost) while the radius is 0
    batch = (obs, torch.rand(64, 3) * 2 - 1, torch.randn(64), torch.randn(64, 6), torch.zeros(64), torch.ones(64))
    assert learner.update(*batch, global_step=50)["losses/sa_reg"].item() == 0.0
    assert learner.update(*batch, global_step=250)["losses/sa_reg"].item() > 0.0


def test_ppo_gae_matches_hand_computation():
    r = np.array([1.0, -1.0, 0.5, 2.0, 1.0])
    v = np.array([0.3, 0.2, 0.1, 0.4, 0.5])
    v_next = np.array([0.2, 0.1, 7.0, 0.5, 0.6])  # step 2 is truncated (its true next state still bootstraps)
    term = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    end = np.array([0.0, 0.0, 1.0, 0.0, 1.0])
    g, lam = 0.99, 0.95
    delta = [1.0 + g * 0.2 - 0.3, -1.0 + g * 0.1 - 0.2, 0.5 + g * 7.0 - 0.1, 2.0 + g * 0.5 - 0.4, 1.0 - 0.5]
    a4 = delta[4]
    a3 = delta[3] + g * lam * a4
    a2 = delta[2]
    a1 = delta[1] + g * lam * a2
    a0 = delta[0] + g * lam * a1
    adv, ret = sac_ppo.gae(r, v, v_next, term, end, g, lam)
    np.testing.assert_allclose(adv, [a0, a1, a2, a3, a4], rtol=1e-12)
    np.testing.assert_allclose(ret, adv + v)


def test_pa_director_perturbation_moves_action_along_direction():
    args = sac_ppo.Args(hidden_sizes=(32, 32), attack_eps=0.3, adv_iterations=1, adv_ratio=0.5, reg_coef=0.0,
                        reg_eps_start_step=0, reg_eps_end_step=0, pa=True, pa_steps=10, adv_policy_lr=3e-5,
                        adv_value_lr=1e-5, adv_ent_coef=1e-3)
    torch.manual_seed(0)
    learner = sac_ppo.Learner(args, 6, 3, -np.ones(3), np.ones(3), CPU)
    obs = torch.randn(128, 6)
    direction = torch.nn.functional.normalize(torch.randn(128, 3), dim=-1)
    x = learner.pa_perturb(obs, direction)
    assert (x - obs).abs().max() <= 0.3 + 1e-6
    with torch.no_grad():
        change = learner.actor.deterministic(x) - learner.actor.deterministic(obs)
        random_change = learner.actor.deterministic(obs + 0.3 * (2 * torch.rand_like(obs) - 1)) - \
            learner.actor.deterministic(obs)
    cos = torch.nn.functional.cosine_similarity(change, direction, dim=-1)
    cos_random = torch.nn.functional.cosine_similarity(random_change, direction, dim=-1)
    assert cos.mean() > cos_random.mean() + 0.3


def test_sac_ppo_adversary_rollout_matches_its_behaviour_policy(monkeypatch):
    """The rollout's stored log-probs and values (computed in one batch after the rollout) must be those of the
    policy that acted: with an lr too small to move any weight the PPO ratio is 1 and the clipped loss of
    normalized advantages is 0; V(s_{t+1}) must be the next step's V(s_t) within an episode."""
    args = sac_ppo.Args(hidden_sizes=(32, 32), attack_eps=0.075, adv_iterations=1, adv_ratio=0.5, reg_coef=0.0,
                        reg_eps_start_step=0, reg_eps_end_step=0, adv_policy_lr=1e-30, adv_value_lr=1e-30,
                        adv_ent_coef=0.0, adv_ppo_steps=256, adv_minibatch=64, adv_epochs=1)
    torch.manual_seed(0)
    env = sac_ppo.make_env("Hopper-v4", {})
    learner = sac_ppo.Learner(args, 11, 3, env.action_space.low, env.action_space.high, CPU)
    with torch.no_grad():
        learner.adversary.log_std.fill_(0.5)  # a spread-out behaviour policy: a wrong log-prob shows in the ratio
    normalizer = sac_ppo.RunningNormalizer(11, 10.0, CPU)
    seen = {}
    real_gae = sac_ppo.gae

    def spy(rewards, values, next_values, terminated, episode_end, *rest):
        seen.update(values=values, next_values=next_values, end=episode_end)
        return real_gae(rewards, values, next_values, terminated, episode_end, *rest)

    monkeypatch.setattr(sac_ppo, "gae", spy)
    logs = sac_ppo.AdversaryTrainer(args, env, seed=0).iteration(learner, normalizer)
    assert abs(logs["adversary/policy_loss"].item()) < 1e-5
    within = seen["end"][:-1] == 0
    assert within.sum() > 100 and (seen["end"] == 1).any(), "the rollout should cross an episode end"
    np.testing.assert_allclose(seen["next_values"][:-1][within], seen["values"][1:][within], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("env_id", ["Hopper-v4", "Ant-v4"])
def test_robust_sac_smoke(workdir, env_id):
    proc = run_script("robust_sac.py", "--env-id", env_id, "--total-timesteps", "500", "--run-name", "r", *TINY,
                      "--reg-eps-start-step", "200", "--reg-eps-end-step", "400", "--reg-sgld-steps", "2",
                      cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(workdir / "runs/r/model.pt", map_location="cpu", weights_only=True)
    assert ckpt["method"] == "robust_sac" and ckpt["actor_optimizer"]["state"] and ckpt["global_step"] == 500


@pytest.mark.parametrize("env_id,extra", [("Hopper-v4", []), ("Ant-v4", ["--pa", "--pa-steps", "2"])])
def test_sac_ppo_smoke_runs_adversary_iterations(workdir, env_id, extra):
    proc = run_script("sac_ppo.py", "--env-id", env_id, "--total-timesteps", "500", "--run-name", "p", *TINY,
                      "--adv-iterations", "2", "--adv-ppo-steps", "128", "--adv-minibatch", "32",
                      "--reg-eps-start-step", "200", "--reg-eps-end-step", "400", *extra, cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "agent 500 + adversary 256 = 756" in proc.stdout
    ckpt = torch.load(workdir / "runs/p/model.pt", map_location="cpu", weights_only=True)
    assert ckpt["method"] == "sac_ppo" and ckpt["actor_optimizer"]["state"]
    assert ckpt["adversary_optimizer"]["state"], "the PPO adversary never stepped"
    assert ckpt["train_state"]["adversary_trainer"]["env_steps"] == 256
    expected_kind = "ppo_director_action" if extra else "ppo_gaussian_obs"
    assert ckpt["arch"]["adversary"] == expected_kind


def test_sac_ppo_task_without_paper_defaults_names_the_missing_flags():
    given = dict(total_timesteps=1000, reg_eps_start_step=0, reg_eps_end_step=0)
    args = sac_ppo.Args(env_id="InvertedPendulum-v4", attack_eps=0.1, adv_iterations=3, adv_ratio=0.5, reg_coef=0.0,
                        **given)
    with pytest.raises(sac_ppo.UserError, match=r"pass --adv-policy-lr, --adv-value-lr, --adv-ent-coef$"):
        sac_ppo.resolve_args(args)
    args = sac_ppo.Args(env_id="InvertedPendulum-v4", attack_eps=0.1, adv_iterations=3, adv_ratio=0.5, reg_coef=0.0,
                        **given, adv_policy_lr=1e-4, adv_value_lr=1e-4, adv_ent_coef=0.0)
    assert sac_ppo.resolve_args(args).adv_iterations == 3
