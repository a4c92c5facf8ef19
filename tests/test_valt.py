"""VALT-EPS and VALT-SOFT: the math (PGD, mixture target, adversary density and its Boltzmann optimum,
the soft-worst symmetry) and end-to-end runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sac_valt_eps
import sac_valt_soft
from conftest import TINY, run_script

CPU = torch.device("cpu")


def eps_learner(**overrides):
    args = sac_valt_eps.Args(hidden_sizes=(32, 32), attack_eps=0.3, worst_rate_remain_steps=100, adv_ratio=0.5,
                             reg_coef=0.0, reg_eps_start_step=0, reg_eps_end_step=0)
    for k, v in overrides.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    return sac_valt_eps.Learner(args, 5, 2, -np.ones(2), np.ones(2), CPU)


def pgd_objective(learner, obs, obs_tilde):
    with torch.no_grad():
        return learner.critic(obs, learner.actor.deterministic(obs_tilde)).mean(0)


# --- VALT-EPS ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [2, 10])
def test_pgd_stays_in_ball_and_lowers_q_below_start_and_uniform(steps):
    learner = eps_learner(pgd_steps=steps)
    obs = torch.randn(512, 5)
    assert learner.args.pgd_start == "step"
    torch.manual_seed(1)  # the same draw PGD starts from: uniform in the step box
    start = obs + (2 * torch.rand_like(obs) - 1) * min(learner.args.pgd_step_scale * learner.eps / steps, learner.eps)
    torch.manual_seed(1)
    worst = learner.pgd_worst_obs(learner.critic, obs)
    assert (worst - obs).abs().max() <= learner.eps + 1e-6
    q_worst, q_start = pgd_objective(learner, obs, worst), pgd_objective(learner, obs, start)
    q_uniform = pgd_objective(learner, obs, learner.uniform_obs(obs))
    assert (q_worst < q_start).float().mean() > 0.9
    assert q_worst.mean() < q_uniform.mean() - 0.1 * (q_uniform - q_worst).abs().mean()
    # ... and leaves no parameter gradient behind
    assert all(p.grad is None for p in list(learner.actor.parameters()) + list(learner.critic.parameters()))


@pytest.mark.parametrize("k_w", [0.0, 1.0, 0.5])
def test_valt_eps_target_equals_hand_computation(k_w):
    learner = eps_learner()
    rewards = torch.tensor([1.0, -2.0, 0.5])
    next_obs = torch.randn(3, 5)
    terminated = torch.tensor([0.0, 1.0, 0.0])
    torch.manual_seed(42)
    y = learner.critic_target_value(rewards, next_obs, terminated, k_w)

    # By hand, drawing the random numbers in the same order: uniform noise, PGD start, policy samples.
    torch.manual_seed(42)
    eps, critic, actor = learner.eps, learner.critic_target, learner.actor
    components = []
    if k_w < 1:
        components.append((1 - k_w, next_obs + eps * (2 * torch.rand(3, 5) - 1)))
    if k_w > 0:
        x = next_obs + eps / 2 * (2 * torch.rand(3, 5) - 1)  # the reference start: the step box, step eps/2
        for _ in range(2):
            x = x.detach().requires_grad_(True)
            q = 0.5 * (critic(next_obs, actor.deterministic(x))[0] + critic(next_obs, actor.deterministic(x))[1])
            (g,) = torch.autograd.grad(q.sum(), x)
            x = torch.minimum(torch.maximum(x - eps / 2 * g.sign(), next_obs - eps), next_obs + eps)
        components.append((k_w, x.detach()))
    with torch.no_grad():
        obs_tilde = torch.cat([c[1] for c in components])
        a, logp = actor.sample(obs_tilde)
        q1, q2 = critic(next_obs.repeat(len(components), 1), a)
        v = torch.minimum(q1, q2) - learner.alpha * logp
        mixed = sum(w * v[i * 3:(i + 1) * 3] for i, (w, _) in enumerate(components))
        expected = rewards + 0.99 * (1 - terminated) * mixed
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert y[1].item() == pytest.approx(-2.0)


def test_worst_rate_schedule_and_regulariser():
    learner = eps_learner(worst_rate_remain_steps=1000, reg_coef=1.0, reg_eps_start_step=100, reg_eps_end_step=300)
    assert learner.worst_rate(0) == 0 and learner.worst_rate(250) == pytest.approx(0.25) and learner.worst_rate(5000) == 1
    assert learner.reg_eps(50) == 0 and learner.reg_eps(200) == pytest.approx(0.15) and learner.reg_eps(10**6) == 0.3
    obs = torch.randn(256, 5)
    torch.manual_seed(3)
    reg = learner.sa_regularizer(obs, 0.3)
    # SGLD finds a larger action change than a random point of the ball
    with torch.no_grad():
        random_distance = learner.policy_distance(learner.actor(obs), learner.uniform_obs(obs)).mean()
    assert reg.item() > random_distance.item()
    assert learner.sa_regularizer(obs, 1e-12).item() < 1e-12


def test_sampled_mixture_is_an_unbiased_draw_of_the_exact_mixture():
    learner = eps_learner()
    marker = lambda critic, obs: obs + learner.eps  # stands in for PGD: a point no uniform draw hits
    learner.pgd_worst_obs = marker
    obs, k_w = torch.randn(20000, 5), 0.3
    exact, mix = learner.adversary_obs(learner.critic, obs, k_w)
    assert mix == [0.7, 0.3] and torch.equal(exact[20000:], marker(None, obs))
    learner.args.mixture = "sampled"
    torch.manual_seed(3)
    sampled, mix = learner.adversary_obs(learner.critic, obs, k_w)
    assert mix == [1.0] and sampled.shape == obs.shape
    is_worst = (sampled == marker(None, obs)).all(1)
    assert is_worst.float().mean().item() == pytest.approx(k_w, abs=0.01)
    assert ((sampled - obs).abs() <= learner.eps + 1e-6).all()
    # any statistic of s~ has the exact mixture's expectation: here the mean perturbation (0 for the uniform
    # component, eps for the marker), per coordinate
    expected = sum(m * part.sub(obs).mean(0) for m, part in zip([0.7, 0.3], exact.chunk(2)))
    torch.testing.assert_close(sampled.sub(obs).mean(0), expected, atol=0.01, rtol=0)
    for k in (0.0, 1.0):  # the pure cases draw one component only
        assert (learner.adversary_obs(learner.critic, obs[:100], k)[0] == marker(None, obs[:100])).all(1).sum() == 100 * k


def test_behaviour_adversary_mixture_acts_on_the_pgd_worst_observation_with_probability_k_w():
    learner = eps_learner(worst_rate_remain_steps=1000, adv_ratio=1.0)
    marker = lambda critic, obs: obs + learner.eps  # stands in for PGD: a point no uniform draw hits
    learner.pgd_worst_obs = marker
    seen = []
    learner.actor.sample = lambda obs: (seen.append(obs[0]) or (obs[:, :2], None))
    obs = torch.randn(5)

    def marked_share(step: int, draws: int = 4000) -> float:
        rng = np.random.default_rng(0)
        seen.clear()
        for _ in range(draws):
            sac_valt_eps.behaviour_action(learner, obs, {}, rng, step)
        return float(np.mean([bool(torch.equal(o, marker(None, obs))) for o in seen]))

    assert marked_share(500) == 0.0  # the default: SPEC §5's uniform proxy only
    learner.args.behaviour_adversary = "mixture"
    assert marked_share(0) == 0.0 and marked_share(5000) == 1.0  # k_w 0 and 1
    assert marked_share(300) == pytest.approx(0.3, abs=0.03)
    assert all((o - obs).abs().max() <= learner.eps + 1e-6 for o in seen)
    learner.args.adv_ratio = 0.0  # clean episodes stay clean
    assert marked_share(5000, 200) == 0.0 and all(torch.equal(o, obs) for o in seen)


# --- Appendix E.2 ablations (both methods) ----------------------------------------------------------
def soft_learner(**overrides):
    args = sac_valt_soft.Args(hidden_sizes=(16, 16), attack_eps=0.2, kappa=3.0, adv_ratio=0.5, adv_reset_every=0,
                              reg_coef=0.0, reg_eps_start_step=0, reg_eps_end_step=0)
    for k, v in overrides.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    return sac_valt_soft.Learner(args, 5, 2, -np.ones(2), np.ones(2), CPU)


@pytest.mark.parametrize("make", [lambda **kw: eps_learner(worst_rate_remain_steps=1, **kw), soft_learner],
                         ids=["valt_eps", "valt_soft"])
@pytest.mark.parametrize("pe,pi", [(True, True), (False, True), (True, False), (False, False)])
def test_ablations_drop_the_adversary_only_where_asked(make, pe, pi):
    """w/o PE: the critic target's policy sees the true s'; w/o PI: the actor loss's policy sees the true s
    (paper Appendix E.2). The actor's inputs are recorded: exactly the clean batches appear where the adversary
    is off, and only perturbed ones where it is on."""
    learner = make(pe_adversary=pe, pi_adversary=pi)
    seen, drawn, sample = [], [], learner.actor.sample

    def spy(obs, *a, **kw):
        out = sample(obs, *a, **kw)
        seen.append(obs.detach().clone())
        drawn.append(tuple(t.detach().clone() for t in out))
        return out
    learner.actor.sample = spy
    obs, next_obs = torch.randn(8, 5), torch.randn(8, 5)
    alpha = learner.alpha.clone()  # the actor loss's temperature (the alpha step comes after it)
    logs = learner.update(obs, torch.rand(8, 2) * 2 - 1, torch.randn(8), next_obs, torch.zeros(8), torch.ones(8), 10)
    # the actor's draws in order: the critic target's, then the actor loss's (then VALT-SOFT's adversary loss)
    assert torch.equal(seen[0], next_obs) == (not pe)
    assert torch.equal(seen[1], obs) == (not pi)
    assert not any(torch.equal(o, obs) for o in seen[2:])
    if not pi:  # the actor loss is then SAC's at the true s, by hand from its own draw
        action, log_prob = drawn[1]
        with torch.no_grad():
            expected = (alpha * log_prob - learner.critic(obs, action).min(0).values).mean()
        torch.testing.assert_close(logs["losses/actor_loss"], expected)
    if not pe:  # and the target is then SAC's, by hand
        learner.actor.sample = sample
        r, term = torch.tensor([1.0] * 8), torch.zeros(8)
        torch.manual_seed(5)
        y = learner.critic_target_value(r, next_obs, term, 1.0 if make is not soft_learner else 3.0)
        torch.manual_seed(5)
        if make is soft_learner:
            learner.adversary.sample(next_obs)  # still drawn: its KL to the prior is logged
        with torch.no_grad():
            a, logp = learner.actor.sample(next_obs)
            expected = r + 0.99 * (learner.critic_target(next_obs, a).min(0).values - learner.alpha * logp)
        torch.testing.assert_close(y, expected)


def test_target_kl_term_needs_adversarial_policy_evaluation(workdir):
    proc = run_script("sac_valt_soft.py", "--no-pe-adversary", "--target-kl-term", "--total-timesteps", "10",
                      cwd=str(workdir))
    assert proc.returncode == 2 and "--target-kl-term" in proc.stderr and "Traceback" not in proc.stderr


# --- VALT-SOFT --------------------------------------------------------------------------------------
def adversary_density(adv, obs, obs_tilde):
    """nu(s~|s) from its definition, by inverting s~ = s + eps tanh(u)."""
    mean, log_std = adv(obs)
    u = torch.atanh((obs_tilde - obs) / adv.eps)
    gauss = torch.distributions.Normal(mean, log_std.exp()).log_prob(u)
    return (gauss - torch.log(adv.eps * (1 - torch.tanh(u) ** 2))).sum(-1)


def test_adversary_log_density_is_a_normalized_density_matching_samples():
    torch.manual_seed(0)
    adv = sac_valt_soft.Adversary(1, [16, 16], eps=0.4)
    obs = torch.full((1, 1), 0.7)
    samples, log_nu = adv.sample(obs.expand(20000, 1))
    assert (samples - obs).abs().max() <= 0.4
    torch.testing.assert_close(log_nu, adversary_density(adv, obs.expand(20000, 1), samples), rtol=1e-4, atol=1e-4)
    grid = obs + 0.4 * torch.linspace(-1 + 1e-6, 1 - 1e-6, 200001).unsqueeze(-1)
    with torch.no_grad():
        density = adversary_density(adv, obs.expand_as(grid), grid).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=2e-3)
    # histogram of samples vs the density integrated over each bin
    edges = np.linspace(0.3, 1.1, 9)
    hist = np.histogram(samples.detach().numpy()[:, 0], edges)[0] / 20000
    cdf = np.concatenate([[0], np.cumsum(0.5 * (density[1:] + density[:-1]).numpy() * np.diff(grid[:, 0].numpy()))])
    expected = np.diff(np.interp(edges, grid[:, 0].numpy(), cdf))
    np.testing.assert_allclose(hist, expected, atol=0.01)


def test_fresh_adversary_starts_at_the_uniform_prior():
    torch.manual_seed(0)
    adv = sac_valt_soft.Adversary(17, [64, 64], eps=0.15)
    obs = torch.randn(4096, 17)
    with torch.no_grad():
        samples, log_nu = adv.sample(obs)
    kl = (log_nu - (-17 * math.log(0.3))).mean().item()  # one-sample estimate of KL(nu || uniform)
    assert 0 <= kl < 17 * 0.02
    # and its marginal per dimension is close to uniform on the ball
    x = ((samples - obs) / 0.15).numpy().ravel()
    hist = np.histogram(x, bins=10, range=(-1, 1))[0] / x.size
    np.testing.assert_allclose(hist, 0.1, atol=0.02)


def test_adversary_loss_converges_to_boltzmann_solution():
    """With V(s, s~) = a (s~ - s) on a 1-D ball of radius 1, nu* ∝ exp(-a x / kappa) on [-1, 1] (x = s~ - s):
    a truncated exponential with mean 1/lam - coth(lam), lam = a / kappa."""
    args = sac_valt_soft.Args(hidden_sizes=(32, 32), attack_eps=1.0, kappa=1.0, adv_ratio=0.5, adv_reset_every=0,
                              reg_coef=0.0, reg_eps_start_step=0, reg_eps_end_step=0, adv_lr=3e-3)
    torch.manual_seed(0)
    learner = sac_valt_soft.Learner(args, 1, 1, -np.ones(1), np.ones(1), CPU)
    slope, kappa = 2.0, 1.0
    learner.soft_value = lambda critic, obs, obs_tilde: slope * (obs_tilde - obs).sum(-1)
    obs = torch.randn(256, 1)
    first = learner.adversary_loss(obs, kappa).item()
    for _ in range(1500):
        last = learner.update_adversary(obs, kappa).item()
    lam = slope / kappa
    target_mean = 1 / lam - 1 / math.tanh(lam)
    # min over nu of E[V] + kappa KL(nu||p) is -kappa log E_p exp(-V/kappa) (Gibbs variational principle); the
    # loss drops the constant -kappa log p = kappa log 2
    optimum = -kappa * math.log(math.sinh(lam) / lam) - kappa * math.log(2)
    with torch.no_grad():
        x = learner.adversary.sample(obs.repeat(40, 1))[0] - obs.repeat(40, 1)
        final = np.mean([learner.adversary_loss(obs, kappa).item() for _ in range(40)])
    assert last < first
    assert x.mean().item() == pytest.approx(target_mean, abs=0.05)
    assert final == pytest.approx(optimum, abs=0.05)
    assert final >= optimum - 0.02  # a KL projection can only be worse than the exact minimiser


def test_valt_soft_target_contains_kl_term_only_when_asked():
    base = dict(hidden_sizes=(16, 16), attack_eps=0.2, kappa=3.0, adv_ratio=0.5, adv_reset_every=0, reg_coef=0.0,
                reg_eps_start_step=0, reg_eps_end_step=0)
    assert sac_valt_soft.Args(**base).target_kl_term is False  # off by default (SPEC §3)
    torch.manual_seed(0)
    learner = sac_valt_soft.Learner(sac_valt_soft.Args(**base, target_kl_term=True), 4, 2, -np.ones(2), np.ones(2), CPU)
    r, s2, term = torch.tensor([1.0, 2.0]), torch.randn(2, 4), torch.tensor([0.0, 0.0])
    torch.manual_seed(7)
    y_kl = learner.critic_target_value(r, s2, term, 3.0)
    torch.manual_seed(7)
    obs_tilde, log_nu = learner.adversary.sample(s2)
    a, logp = learner.actor.sample(obs_tilde)
    v = learner.critic_target(s2, a).min(0).values - learner.alpha * logp
    expected = r + 0.99 * (v + 3.0 * (log_nu - (-4 * math.log(0.4))))
    torch.testing.assert_close(y_kl, expected.detach())
    learner.args.target_kl_term = False
    torch.manual_seed(7)
    torch.testing.assert_close(learner.critic_target_value(r, s2, term, 3.0), (r + 0.99 * v).detach())


def test_kappa_schedule_and_adversary_reset():
    args = sac_valt_soft.Args(hidden_sizes=(16, 16), attack_eps=0.2, kappa=4.0, kappa_start=1000.0,
                              kappa_anneal_steps=100, adv_ratio=0.5, adv_reset_every=0, reg_coef=0.0,
                              reg_eps_start_step=0, reg_eps_end_step=0)
    learner = sac_valt_soft.Learner(args, 4, 2, -np.ones(2), np.ones(2), CPU)
    assert learner.kappa(0) == 1000.0 and learner.kappa(50) == pytest.approx(502.0) and learner.kappa(200) == 4.0
    init = {k: v.clone() for k, v in learner.adversary.state_dict().items()}
    learner.update_adversary(torch.randn(32, 4), 4.0)
    assert not all(torch.equal(init[k], v) for k, v in learner.adversary.state_dict().items())
    learner.reset_adversary()
    assert all(torch.equal(init[k], v) for k, v in learner.adversary.state_dict().items())


# --- the soft-worst symmetry on a tabular SA-MDP (SPEC §2, Theorem 4.6) -----------------------------
def test_soft_worst_symmetry_on_tabular_mdp():
    rng = np.random.default_rng(0)
    n_s, n_a, gamma, alpha, kappa = 4, 3, 0.9, 0.3, 0.7
    reward = rng.normal(size=(n_s, n_a))
    trans = rng.dirichlet(np.ones(n_s), size=(n_s, n_a))
    pi = rng.dirichlet(np.ones(n_a), size=n_s)  # fixed agent policy pi(a|s~)
    neighbours = [[s, (s + 1) % n_s] for s in range(n_s)]  # the "eps-ball" of s, uniform prior
    prior = 1 / 2

    def v_pi(q, s, s_tilde):
        return float(pi[s_tilde] @ (q[s] - alpha * np.log(pi[s_tilde])))

    # Agent: soft-worst policy evaluation with the KL soft-min value
    q = np.zeros((n_s, n_a))
    for _ in range(500):
        v = np.array([-kappa * math.log(sum(prior * math.exp(-v_pi(q, s, t) / kappa) for t in neighbours[s]))
                      for s in range(n_s)])
        q = reward + gamma * trans @ v
    # The soft-min equals the value of the minimisation over nu: at nu* and above it elsewhere
    for s in range(n_s):
        vals = np.array([v_pi(q, s, t) for t in neighbours[s]])
        nu_star = prior * np.exp(-vals / kappa)
        nu_star /= nu_star.sum()
        objective = lambda nu: float(nu @ vals + kappa * np.sum(nu * np.log(nu / prior)))
        assert objective(nu_star) == pytest.approx(v[s], abs=1e-9)
        for w in np.linspace(0.01, 0.99, 25):
            assert objective(np.array([w, 1 - w])) >= v[s] - 1e-9
    # Adversary: reward -r, the agent's entropy bonus flipped, KL penalty on its own policy; it maximises
    q_adv = np.zeros((n_s, 2))  # over its actions s~ (index into neighbours[s])
    v_adv = np.zeros(n_s)
    for _ in range(500):
        for s in range(n_s):
            for j, t in enumerate(neighbours[s]):
                q_adv[s, j] = float(pi[t] @ (-reward[s] + alpha * np.log(pi[t]) + gamma * trans[s] @ v_adv))
        v_adv = kappa * np.log(np.sum(prior * np.exp(q_adv / kappa), axis=1))
    np.testing.assert_allclose(v_adv, -v, atol=1e-8)
    for s in range(n_s):
        for j, t in enumerate(neighbours[s]):
            assert q_adv[s, j] == pytest.approx(-v_pi(q, s, t), abs=1e-8)


# --- end to end -------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id,mixture", [("Hopper-v4", "exact"), ("Ant-v4", "sampled")])
def test_valt_eps_smoke(workdir, env_id, mixture):
    proc = run_script("sac_valt_eps.py", "--env-id", env_id, "--total-timesteps", "500", "--run-name", "e", *TINY,
                      "--worst-rate-remain-steps", "300", "--reg-eps-start-step", "200", "--reg-eps-end-step", "400",
                      "--reg-coef", "3", "--mixture", mixture, cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(workdir / "runs/e/model.pt", map_location="cpu", weights_only=True)
    assert ckpt["method"] == "valt_eps" and ckpt["global_step"] == 500 and ckpt["actor_optimizer"]["state"]
    assert ckpt["args"]["worst_rate_remain_steps"] == 300 and ckpt["args"]["mixture"] == mixture


@pytest.mark.parametrize("env_id", ["Hopper-v4", "Ant-v4"])
def test_valt_soft_smoke(workdir, env_id):
    """Also: the final checkpoint lands on a reset step (500 = 2 x 250), so its `adversary` has had one update; the
    adversary trained from 250 to 500 is kept beside it, and the own-adversary attack and slim models use that one."""
    from attacks import common, nets

    proc = run_script("sac_valt_soft.py", "--env-id", env_id, "--total-timesteps", "500", "--run-name", "s", *TINY,
                      "--kappa", "4", "--adv-reset-every", "250", "--reg-eps-start-step", "200",
                      "--reg-eps-end-step", "400", "--reg-coef", "3", cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(workdir / "runs/s/model.pt", map_location="cpu", weights_only=True)
    assert ckpt["method"] == "valt_soft" and ckpt["adversary_optimizer"]["state"]
    assert ckpt["adversary"]["mean.weight"].shape[0] == ckpt["obs_dim"]
    trained, current, init = (ckpt[k]["mean.weight"] for k in ("adversary_trained", "adversary", "adversary_init"))
    assert not torch.equal(current, init)  # one update since the reset at 500
    assert (trained - init).abs().max() > 10 * (current - init).abs().max()  # 250 updates
    slim = common.slim_checkpoint(str(workdir / "runs/s/model.pt"), str(workdir / "slim.pt"))
    assert nets.adversary_state(slim)[1] == "trained until its last reset"
    output, _ = nets.build_adversary(slim, torch.device("cpu"))
    expected = nets.MeanHeadAdversary(ckpt["obs_dim"], ckpt["obs_dim"], [32, 32], torch.nn.ReLU)
    expected.load_saved(ckpt["adversary_trained"])
    obs = torch.randn(8, ckpt["obs_dim"])
    assert torch.equal(output(obs), expected(obs))


def test_valt_rejects_bad_eps(workdir):
    proc = run_script("sac_valt_eps.py", "--attack-eps", "0", "--total-timesteps", "10", cwd=str(workdir))
    assert proc.returncode == 2 and "must be > 0" in proc.stderr
    proc = run_script("sac_valt_eps.py", "--mixture", "mean", "--total-timesteps", "10", cwd=str(workdir))
    assert proc.returncode == 2 and "--mixture must be exact or sampled" in proc.stderr
    proc = run_script("sac_valt_eps.py", "--pgd-step-scale", "-1", "--total-timesteps", "10", cwd=str(workdir))
    assert proc.returncode == 2 and "--pgd-step-scale > 0" in proc.stderr  # a negative step would climb Q
