"""sac.py: components (PER, normalizer, bootstrapping), checkpoint contract, resume, seeding, CLI errors."""
from __future__ import annotations


import numpy as np
import pytest
import torch

import sac
from conftest import TINY, run_script

CPU = torch.device("cpu")

TINY_ARGS = dict(learning_starts=200, batch_size=32, hidden_sizes=(32, 32), buffer_size=5000, eval_every=0,
                 eval_episodes=1, log_every=200, threads=1)


# --- prioritized replay -----------------------------------------------------------------------------
def test_blocked_priorities_find_matches_cumulative_sum():
    rng = np.random.default_rng(0)
    prios = rng.random(203)  # several blocks, the last one partial
    tree = sac.BlockedPriorities(203, CPU)
    tree.update(torch.arange(203), torch.from_numpy(prios))

    def check():
        ends = tree.block_sums.cumsum(0)
        assert float(ends[-1]) == pytest.approx(prios.sum())
        values = np.concatenate([rng.random(2000) * prios.sum(), np.cumsum(prios)[:-1]])  # boundaries included
        expected = np.searchsorted(np.cumsum(prios), values, side="right")
        found = tree.find(torch.from_numpy(values), ends).numpy()
        assert np.all(np.abs(found - expected) <= 1)  # exactly on a boundary: either side, by rounding
        np.testing.assert_array_equal(found[:2000], expected[:2000])
    check()
    # a later partial update keeps every block sum current; an index given twice keeps the larger priority
    tree.update(torch.tensor([2, 70, 70, 202]), torch.tensor([5.0, 0.5, 0.25, 3.0]))
    prios[2], prios[70], prios[202] = 5.0, 0.5, 3.0
    check()


def test_per_matches_the_exact_probabilities_over_many_blocks():
    """Chi-square of 64 000 stratified draws from a 300-slot buffer (5 blocks, random priorities) against
    p_i / sum p: far below the 0.999 quantile (~380 at 299 degrees of freedom); a draw one slot off fails it."""
    rng = np.random.default_rng(1)
    buf = sac.PrioritizedReplayBuffer(300, 1, 1, CPU, alpha=1.0, eps=0.0, seed=3)
    for i in range(300):
        buf.add([i], [0.0], 0.0, [i], False)
    td = torch.from_numpy(rng.random(300) ** 3 + 1e-3)
    buf.update_priorities(torch.arange(300), td)
    counts = torch.zeros(300, dtype=torch.float64)
    for _ in range(250):
        counts += torch.bincount(buf.sample(256, beta=0.4)[0], minlength=300)
    expected = counts.sum() * td / td.sum()
    assert float(((counts - expected) ** 2 / expected).sum()) < 380
    shifted = torch.roll(counts, 1)  # what an off-by-one search would produce
    assert float(((shifted - expected) ** 2 / expected).sum()) > 1000


def test_per_samples_proportionally_and_weights_follow_formula():
    buf = sac.PrioritizedReplayBuffer(8, 1, 1, CPU, prioritized=True, alpha=1.0, eps=0.0, seed=1)
    for i in range(8):
        buf.add([i], [0.0], 0.0, [i], False)
    td = torch.tensor([1, 1, 1, 1, 2, 2, 4, 8], dtype=torch.float64)
    buf.update_priorities(torch.arange(8), td)
    counts = torch.zeros(8)
    for _ in range(400):
        idx, *_, w = buf.sample(64, beta=0.5)
        counts += torch.bincount(idx, minlength=8)
    freq = counts / counts.sum()
    torch.testing.assert_close(freq, (td / td.sum()).float(), atol=0.01, rtol=0)
    # importance weights: (N P(i))^-beta normalized by the batch max
    idx, obs, *_, w = buf.sample(64, beta=0.5)
    assert torch.equal(obs[:, 0], idx.float())  # rows are the sampled transitions
    raw = (8 * td[idx] / td.sum()) ** -0.5
    torch.testing.assert_close(w, (raw / raw.max()).float(), rtol=1e-5, atol=0)
    # new transitions enter with the max priority seen
    buf.add([9], [0.0], 0.0, [9], False)
    assert float(buf.priorities.leaves.view(-1)[0]) == pytest.approx(8.0)


def test_uniform_replay_has_unit_weights():
    buf = sac.PrioritizedReplayBuffer(16, 1, 1, CPU, prioritized=False)
    for i in range(16):
        buf.add([i], [0.0], 0.0, [i], False)
    *_, w = buf.sample(32, beta=0.4)
    assert torch.all(w == 1)
    assert float(buf.priorities.block_sums.sum()) == 0  # uniform replay keeps no priorities


def test_replay_sampling_is_seeded_and_its_state_round_trips():
    def filled(seed):
        buf = sac.PrioritizedReplayBuffer(64, 1, 1, CPU, seed=seed)
        for i in range(50):
            buf.add([i], [0.0], 0.0, [i], False)
        buf.update_priorities(torch.arange(50), torch.linspace(0.1, 5.0, 50))
        return buf
    a, b = filled(3), filled(3)
    assert torch.equal(a.sample(32, 0.4)[0], b.sample(32, 0.4)[0])
    assert not torch.equal(a.sample(32, 0.4)[0], filled(4).sample(32, 0.4)[0])
    restored = sac.PrioritizedReplayBuffer(64, 1, 1, CPU, seed=99)
    restored.load_state_dict(a.state_dict())
    for _ in range(3):
        x, y = a.sample(32, 0.4), restored.sample(32, 0.4)
        assert all(torch.equal(u, v) for u, v in zip(x, y))


# --- normalizer -------------------------------------------------------------------------------------
def test_running_normalizer_matches_batch_statistics():
    rng = np.random.default_rng(2)
    data = rng.normal(3.0, 2.0, size=(500, 4)) * np.array([1, 10, 0.1, 1])
    norm = sac.RunningNormalizer(4, clip=100.0, device=torch.device("cpu"))
    for chunk in np.array_split(data, 37):
        norm.update(chunk)
    np.testing.assert_allclose(norm.mean, data.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.var, data.var(0), rtol=1e-3)
    z = norm.normalize(torch.as_tensor(data, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    clipped = sac.RunningNormalizer(1, clip=2.0, device=torch.device("cpu"))
    assert clipped.normalize(torch.tensor([[50.0]])).item() == 2.0


# --- bootstrapping ----------------------------------------------------------------------------------
def test_target_cuts_bootstrap_on_termination_only():
    torch.manual_seed(0)
    learner = sac.Learner(sac.Args(hidden_sizes=(16, 16)), 3, 2, -np.ones(2), np.ones(2), torch.device("cpu"))
    next_obs = torch.randn(4, 3)
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    terminated = torch.tensor([1.0, 0.0, 1.0, 0.0])
    torch.manual_seed(5)
    y = learner.critic_target_value(rewards, next_obs, terminated)
    torch.manual_seed(5)
    a, logp = learner.actor.sample(next_obs)
    v = learner.critic_target(next_obs, a).min(0).values - learner.alpha * logp
    expected = rewards + 0.99 * (1 - terminated) * v
    torch.testing.assert_close(y, expected)
    assert y[0].item() == pytest.approx(1.0) and y[2].item() == pytest.approx(3.0)


def test_buffer_marks_termination_but_not_truncation(workdir):
    out = sac.train(sac.Args(env_id="TestChain-v0", total_timesteps=400, seed=0, save_every=0, **TINY_ARGS))
    buf = out["buffer"]
    n = buf.size
    pos, t = buf.next_obs[:n, 0], buf.next_obs[:n, 1]
    term = buf.terminated[:n]
    assert torch.all(term[pos > 1.5] == 1)
    truncated = (t == 6) & (pos <= 1.5)
    assert truncated.sum() > 5, "the toy task should hit its time limit several times"
    assert torch.all(term[truncated] == 0), "a time-limit truncation must keep bootstrapping"
    assert term.sum() > 5


# --- smoke runs, checkpoint contract ---------------------------------------------------------------
CONTRACT_KEYS = {"checkpoint_format", "method", "env_id", "env_kwargs", "obs_dim", "act_dim", "action_low",
                 "action_high", "arch", "actor", "critic", "critic_target", "normalizer", "log_alpha", "eps",
                 "global_step", "args"}


@pytest.mark.parametrize("env_id,obs_dim,eps", [("Hopper-v4", 11, 0.075), ("Ant-v4", 111, 0.15)])
def test_cli_smoke_run_updates_and_writes_contract(workdir, env_id, obs_dim, eps):
    proc = run_script("sac.py", "--env-id", env_id, "--total-timesteps", "500", "--run-name", "smoke", *TINY,
                      cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step       400/500" in proc.stdout
    ckpt = torch.load(workdir / "runs/smoke/model.pt", map_location="cpu", weights_only=True)
    assert CONTRACT_KEYS <= set(ckpt)
    assert ckpt["method"] == "sac" and ckpt["env_id"] == env_id and ckpt["obs_dim"] == obs_dim
    assert ckpt["eps"] == pytest.approx(eps) and ckpt["global_step"] == 500
    assert ckpt["normalizer"]["mean"].shape == (obs_dim,)
    # updates really ran: the temperature moved away from its initial value of 1 and Adam has state
    assert abs(ckpt["log_alpha"].item()) > 1e-3
    assert ckpt["actor_optimizer"]["state"], "actor optimizer never stepped"
    assert any((workdir / "runs/smoke").glob("events.out.tfevents*"))
    if env_id == "Ant-v4":
        assert ckpt["env_kwargs"] == {"use_contact_forces": True}


def test_checkpoint_round_trip_restores_identical_policy_and_critics(workdir):
    out = sac.train(sac.Args(env_id="Hopper-v4", total_timesteps=300, seed=0, save_every=0, run_name="rt", **TINY_ARGS))
    ckpt = sac.load_checkpoint(out["save_path"])
    learner = sac.Learner(sac.Args(**{k: v for k, v in ckpt["args"].items() if k in sac.Args.__dataclass_fields__}),
                          ckpt["obs_dim"], ckpt["act_dim"], ckpt["action_low"], ckpt["action_high"], torch.device("cpu"))
    learner.load_state_dict(ckpt)
    norm = sac.RunningNormalizer(ckpt["obs_dim"], 10.0, torch.device("cpu"))
    norm.load_state_dict(ckpt["normalizer"])
    x = torch.randn(7, ckpt["obs_dim"])
    ref = out["learner"]
    torch.testing.assert_close(learner.actor.deterministic(norm.normalize(x)),
                               ref.actor.deterministic(out["normalizer"].normalize(x)), rtol=0, atol=0)
    a = torch.rand(7, ckpt["act_dim"])
    torch.testing.assert_close(learner.critic(x, a), ref.critic(x, a), rtol=0, atol=0)
    torch.testing.assert_close(learner.critic_target(x, a), ref.critic_target(x, a), rtol=0, atol=0)
    assert learner.alpha.item() == pytest.approx(ref.alpha.item())


def test_same_seed_same_numbers_other_seed_differs(workdir):
    common = dict(env_id="Hopper-v4", total_timesteps=300, save_every=0, **TINY_ARGS)
    a = sac.train(sac.Args(**common, seed=7, run_name="a"))["learner"].actor.state_dict()
    b = sac.train(sac.Args(**common, seed=7, run_name="b"))["learner"].actor.state_dict()
    c = sac.train(sac.Args(**common, seed=8, run_name="c"))["learner"].actor.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--env-id", "NoSuchEnv-v0"], "unknown environment id"),
    (["--env-id", "CartPole-v1"], "needs a continuous Box"),
    (["--resume", "does/not/exist.pt"], "checkpoint not found"),
    (["--env-kwargs", "{not json"], "not valid JSON"),
    (["--attack-eps", "-0.1"], "must be > 0"),
])
def test_bad_input_gives_one_clear_error(workdir, args, message):
    proc = run_script("sac.py", "--total-timesteps", "10", *args, cwd=str(workdir))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_resume_from_a_file_that_is_not_a_checkpoint(workdir):
    (workdir / "junk.pt").write_bytes(b"definitely not a zip")
    torch.save({"hello": 1}, workdir / "other.pt")
    for path, message in [("junk.pt", "not a readable checkpoint"), ("other.pt", "not a checkpoint of this project")]:
        proc = run_script("sac.py", "--total-timesteps", "10", "--resume", path, cwd=str(workdir))
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_loaded_buffer_has_the_same_priorities():
    rng = np.random.default_rng(5)
    buf = sac.PrioritizedReplayBuffer(100, 1, 1, CPU, seed=1)
    for i in range(37):
        buf.add([i], [0.0], 1.0, [i + 1], False)
    buf.update_priorities(torch.from_numpy(rng.integers(0, 37, 20)), torch.from_numpy(rng.random(20)))
    restored = sac.PrioritizedReplayBuffer(100, 1, 1, CPU, seed=2)
    restored.load_state_dict(buf.state_dict())
    assert torch.equal(restored.priorities.leaves, buf.priorities.leaves) and restored.max_priority == buf.max_priority
    assert torch.equal(restored.priorities.block_sums, buf.priorities.block_sums)