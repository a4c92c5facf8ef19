"""The attack suite: eps-ball enforcement, each attacker does what it claims on a fixed network, Robust
Sarsa learns Q^pi, learned attackers train/save/reload, eval_all writes the table."""
from __future__ import annotations

import copy
import dataclasses
import glob
import json
import os
import shutil
import time
import types

import numpy as np
import pytest
import torch

import sac
import attack_golden  # tests/attack_golden.py
from attacks import (common, estimate, eval_all, learned, mad, natural, pa_ad, pgd, rl, robust_sarsa, sa_rl, uniform,
                     valt_soft_adv)
from conftest import TINY, run_script
from test_sac import TINY_ARGS


@pytest.fixture(scope="module")
def sac_ckpt(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("victim")
    out = sac.train(sac.Args(env_id="Hopper-v4", total_timesteps=400, seed=0, save_every=0, run_name="victim",
                             save_path=str(out_dir / "model.pt"), **TINY_ARGS))
    return out["save_path"]


@pytest.fixture
def victim(sac_ckpt):
    return common.load_victim(sac_ckpt)


@pytest.fixture(scope="module")
def ppo_ckpt(tmp_path_factory):
    import ppo
    from test_ppo import TINY_PPO

    out_dir = tmp_path_factory.mktemp("ppo_victim")
    out = ppo.train(ppo.Args(env_id="Hopper-v4", total_timesteps=256, seed=0, save_every=0, run_name="ppo_victim",
                             save_path=str(out_dir / "model.pt"), **TINY_PPO))
    return out["save_path"]


@pytest.fixture(params=["sac", "ppo"])
def any_victim(request, sac_ckpt, ppo_ckpt):
    """A victim of each policy kind of the checkpoint contract."""
    return common.load_victim(sac_ckpt if request.param == "sac" else ppo_ckpt)


def learned_args(**overrides):
    """eval_all's flags (every attack's, with their defaults), tiny budgets."""
    settings = dict(episodes=2, attack_budget=300, seeds=1, attacker_hidden=(16, 16), learning_starts=100,
                    ppo_steps=150, pa_steps=3, pa_restarts=2)
    return eval_all.Args(ckpt=(), **{**settings, **overrides})


# --- the eps-ball ---------------------------------------------------------------------------------------
class OutOfBallAttacker:
    name = "broken"

    def __init__(self, eps):
        self.eps, self.calls = eps, 0

    def reset(self):
        pass

    def __call__(self, obs_n):
        self.calls += 1
        shift = 0.5 * self.eps if self.calls < 5 else 1.5 * self.eps  # fine for 4 steps, then leaves the ball
        return obs_n + shift


def test_rollout_catches_an_attacker_leaving_the_ball(victim):
    with pytest.raises(common.AttackError, match="left the eps-ball"):
        common.rollout(victim, OutOfBallAttacker(victim.eps), episodes=1, seed=0)


@pytest.mark.parametrize("make", [
    lambda v: uniform.UniformAttacker(v),
    lambda v: mad.MADAttacker(v, steps=3),
    lambda v: pgd.PGDAttacker(v, steps=3),
    lambda v: rl.PolicyAttacker("pa", lambda o: torch.ones(1, v.act_dim), pa_ad.realizer(v, 3)),
    lambda v: rl.PolicyAttacker("sa", lambda o: 5 * torch.ones(1, v.obs_dim), sa_rl.realizer(v)),
])
def test_attackers_stay_in_ball_over_many_steps(any_victim, make):
    victim = any_victim
    attacker = make(victim)
    env = victim.make_env()
    obs, _ = env.reset(seed=1)
    moved = 0.0
    for _ in range(30):
        obs_n = victim.normalize(obs)
        obs_tilde = attacker(obs_n)
        gap = (obs_tilde - obs_n).abs().max().item()
        assert gap <= victim.eps + 1e-5
        moved = max(moved, gap)
        obs, _, terminated, truncated, _ = env.step(victim.act(obs_tilde.unsqueeze(0))[0].numpy())
        if terminated or truncated:
            obs, _ = env.reset()
    assert moved > 0.5 * victim.eps, "the attacker should actually perturb"


# --- each attacker does what it claims, on a fixed network -------------------------------------------------
def batch_states(victim, n=64):
    env = victim.make_env()
    obs, _ = env.reset(seed=3)
    states = []
    for _ in range(n):
        states.append(victim.normalize(obs))
        obs, *_ = env.step(env.action_space.sample())
    return torch.stack(states)


def test_pgd_lowers_q_more_than_uniform(victim):
    states = batch_states(victim)
    attacker = pgd.PGDAttacker(victim)
    torch.manual_seed(0)
    q_pgd = torch.stack([attacker.objective(s.unsqueeze(0), attacker(s).unsqueeze(0))[0] for s in states])
    q_uni = torch.stack([attacker.objective(s.unsqueeze(0), uniform.UniformAttacker(victim)(s).unsqueeze(0))[0]
                         for s in states])
    assert (q_pgd < q_uni).float().mean() > 0.9


def test_mad_changes_actions_more_than_uniform(victim):
    # A confident policy (std ~ 0.05), as a trained one is: MAD's SGLD noise is scaled for such gradients.
    with torch.no_grad():
        victim.actor.log_std.weight.zero_()
        victim.actor.log_std.bias.fill_(-0.3)
    states = batch_states(victim)
    attacker, noise = mad.MADAttacker(victim), uniform.UniformAttacker(victim)
    torch.manual_seed(0)
    d_mad = torch.stack([mad.action_change(victim, s.unsqueeze(0), attacker(s).unsqueeze(0))[0] for s in states])
    d_uni = torch.stack([mad.action_change(victim, s.unsqueeze(0), noise(s).unsqueeze(0))[0] for s in states])
    assert (d_mad > d_uni).float().mean() > 0.9


def test_pa_ad_step_ascends_its_objective(victim):
    states = batch_states(victim, 32)
    rng = torch.Generator().manual_seed(0)
    improved = 0
    for s in states:
        direction = torch.randn(victim.act_dim, generator=rng)
        direction /= direction.norm()
        torch.manual_seed(1)
        # one restart from the step box (the default schedule's first step), compared with that start itself
        start = common.uniform_in_ball(s.unsqueeze(0), min(pa_ad.STEP_SCALE * victim.eps / 10, victim.eps))
        torch.manual_seed(1)
        x = pa_ad.pa_perturb(victim, s, direction, steps=10, restarts=1, start="step")
        with torch.no_grad():
            before = pa_ad.pa_objective(victim, s.unsqueeze(0), start, direction.unsqueeze(0))
            after = pa_ad.pa_objective(victim, s.unsqueeze(0), x.unsqueeze(0), direction.unsqueeze(0))
        improved += int(after.item() > before.item())
    assert improved >= 0.9 * len(states)


# --- Robust Sarsa -----------------------------------------------------------------------------------------
def test_sarsa_learns_q_pi_of_a_fixed_policy_on_a_chain():
    """Chain 0..4, the fixed policy walks right (a = +1), reward 1 per step, termination on leaving state 4;
    episodes start anywhere. Q^pi(s, pi(s)) = sum_{k < 5 - s} gamma^k."""
    gamma, n = 0.9, 5
    rng = np.random.default_rng(0)
    obs, act, rew, nxt, nxt_act, term = [], [], [], [], [], []
    for _ in range(400):
        s = int(rng.integers(0, n))
        while True:
            done = s == n - 1
            obs.append([s / n]), act.append([1.0]), rew.append(1.0), term.append(float(done))
            nxt.append([(s + 1) / n]), nxt_act.append([1.0])
            if done:
                break
            s += 1
    data = {"obs": torch.tensor(obs), "actions": torch.tensor(act), "rewards": torch.tensor(rew),
            "next_obs": torch.tensor(nxt), "next_actions": torch.tensor(nxt_act), "terminated": torch.tensor(term)}
    q = robust_sarsa.fit_sarsa(data, 1, 1, updates=3000, sarsa_eps=0.0, sarsa_reg=0.0, seed=0, hidden=(64, 64),
                               gamma=gamma, lr=1e-3, tau=0.02, batch_size=256)
    states = torch.arange(n, dtype=torch.float32).unsqueeze(-1) / n
    learned = q(states, torch.ones(n, 1)).mean(0)
    true = torch.tensor([sum(gamma**k for k in range(n - s)) for s in range(n)])
    torch.testing.assert_close(learned, true, atol=0.1, rtol=0.0)


def test_sarsa_tuples_are_consecutive_steps(victim):
    data = robust_sarsa.collect_transitions(victim, 50, seed=0, explore="deterministic")
    same = (data["obs"][1:] == data["next_obs"][:-1]).all(-1) & (data["terminated"][:-1] == 0)
    assert same.float().mean() > 0.9  # every step continues the previous one, except across episode ends
    torch.testing.assert_close(data["next_actions"], victim.act(data["next_obs"]))
    # default: the victim samples its actions (exploration, as the reference's stochastic rollouts), and a' is the
    # action it then really takes at s'
    data = robust_sarsa.collect_transitions(victim, 50, seed=0)
    assert not torch.allclose(data["actions"], victim.act(data["obs"]), atol=1e-3)
    cont = (data["terminated"][:-1] == 0) & (data["obs"][1:] == data["next_obs"][:-1]).all(-1)
    torch.testing.assert_close(data["actions"][1:][cont], data["next_actions"][:-1][cont])


def test_sarsa_data_of_a_ppo_victim_keep_its_unclipped_actions():
    """PPO-kind victims: what the environment executed is the clip of the stored raw action (the reference's Sarsa
    input), and the trained fixture's raw actions do leave the box; a' is the raw action then taken at s'."""
    from conftest import PPO_FIXTURE

    victim = common.load_victim(PPO_FIXTURE)
    data = robust_sarsa.collect_transitions(victim, 300, seed=0)
    torch.testing.assert_close(data["actions"], victim.actor.clip(data["raw_actions"]))
    torch.testing.assert_close(data["next_actions"], victim.actor.clip(data["raw_next_actions"]))
    assert (data["raw_actions"].abs() > 1).float().mean() > 0.05  # a saturating victim: the inputs differ
    cont = (data["terminated"][:-1] == 0) & (data["obs"][1:] == data["next_obs"][:-1]).all(-1)
    torch.testing.assert_close(data["raw_actions"][1:][cont], data["raw_next_actions"][:-1][cont])
    deterministic = robust_sarsa.collect_transitions(victim, 50, seed=0, explore="deterministic")
    torch.testing.assert_close(deterministic["raw_actions"], victim.actor.mean(deterministic["obs"]))
    env = victim.make_env()  # the environment received the clipped action (its control cost says which)
    env.reset(seed=0)
    replayed = [env.step(a.numpy())[1] for a in data["actions"][:20]]
    np.testing.assert_allclose(replayed, data["rewards"][:20].numpy(), rtol=1e-5)


def rs_args(save_dir, **overrides):
    """save_dir is required: fitted critics are cached there, and a shared one would let one test read another's."""
    settings = dict(rs_settings=("0.05:0.1",), rs_steps=200, rs_updates=20, rs_hidden=(16, 16), pgd_steps=2,
                    pgd_restarts=1, save_dir=str(save_dir), episodes=1)
    return eval_all.Args(ckpt=(), **{**settings, **overrides})


def test_rs_resumes_from_saved_critics_with_the_numbers_of_an_uncut_run(sac_ckpt, monkeypatch, tmp_path):
    """A suite cut after one grid cell refits only the missing cell on the re-run and reports what an uncut run
    reports; other evaluation settings re-evaluate a saved critic without refitting; other Sarsa settings refit."""
    victim = common.load_victim(sac_ckpt)
    grid = ["0.05:0.1", "0.15:1"]
    uncut = robust_sarsa.evaluate(victim, rs_args(tmp_path / "uncut", rs_settings=grid))
    fits, fit = [], robust_sarsa.fit_sarsa
    monkeypatch.setattr(robust_sarsa, "fit_sarsa", lambda *a, **k: fits.append(a[4:6]) or fit(*a, **k))
    robust_sarsa.evaluate(victim, rs_args(tmp_path / "cut", rs_settings=grid[:1]))  # the run that was stopped
    resumed = robust_sarsa.evaluate(victim, rs_args(tmp_path / "cut", rs_settings=grid))
    assert fits == [(0.05, 0.1), (0.15, 1.0)]  # the second call fitted only the cell the first one lacked
    assert [r["cached"] for r in resumed["per_setting"]] == [True, True, False, False]
    strip = lambda row: [{k: v for k, v in r.items() if k != "cached"} for r in row["per_setting"]]
    assert strip(resumed) == strip(uncut) and resumed["stats"].returns == uncut["stats"].returns
    record_path = glob.glob(str(tmp_path / "cut" / "*_rs_e0.05_r0.1_*.json"))[0]
    before = json.load(open(record_path))["results"]
    longer = robust_sarsa.evaluate(victim, rs_args(tmp_path / "cut", rs_settings=grid, episodes=2))
    assert len(fits) == 2 and not any(r["cached"] for r in longer["per_setting"])  # saved critics, re-evaluated
    after = json.load(open(record_path))["results"]
    assert [len(r["returns"]) for r in before] == [1, 1] and [len(r["returns"]) for r in after] == [2, 2]
    fresh = robust_sarsa.evaluate(victim, rs_args(tmp_path / "fresh", rs_settings=grid, episodes=2))  # fitted now
    assert strip(longer) == strip(fresh)  # the loaded critic is the fitted one
    robust_sarsa.evaluate(victim, rs_args(tmp_path / "cut", rs_settings=grid[:1], rs_updates=21))
    assert fits[4:] == [(0.05, 0.1)]  # a different fit is a different critic


def test_a_damaged_cache_record_is_recomputed_and_an_unwritable_save_dir_is_one_line(sac_ckpt, capsys, tmp_path):
    victim = common.load_victim(sac_ckpt)
    first = robust_sarsa.evaluate(victim, rs_args(tmp_path / "rs"))
    record_path = glob.glob(str(tmp_path / "rs" / "*_rs_*.json"))[0]
    with open(record_path, "w") as f:
        f.write('{"results": [')  # damaged outside this code (records are written atomically)
    again = robust_sarsa.evaluate(victim, rs_args(tmp_path / "rs"))
    assert "is unreadable (JSONDecodeError): recomputing it" in capsys.readouterr().out
    assert not any(r["cached"] for r in again["per_setting"]) and again["stats"].returns == first["stats"].returns
    assert json.load(open(record_path))["results"]  # rewritten whole
    critic_path = json.load(open(record_path))["critic"]
    with open(critic_path, "wb") as f:
        f.write(b"\x80\x02 truncated")  # a damaged critic: reached when the record asks for other episodes
    longer = robust_sarsa.evaluate(victim, rs_args(tmp_path / "rs", episodes=2))
    assert f"{critic_path} is unreadable (UnpicklingError): refitting it" in capsys.readouterr().out
    fresh = robust_sarsa.evaluate(victim, rs_args(tmp_path / "fresh", episodes=2))
    assert longer["stats"].returns == fresh["stats"].returns  # refitted: the same critic as a first fit
    assert robust_sarsa.load_critic(critic_path, victim, [16, 16]) is not None  # and saved whole again
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the directory should be: nothing can be created under it
    with pytest.raises(common.AttackError, match="cannot create the save directory"):
        robust_sarsa.evaluate(victim, rs_args(blocked / "attackers"))
    proc = run_script("attacks/eval_all.py", "--ckpt", sac_ckpt, "--episodes", "1", "--attacks", "sa_rl_ppo",
                      "--attack-budget", "200", "--save-dir", str(blocked / "attackers"), cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: cannot create the save directory {blocked / 'attackers'} (Not a directory)"]


def test_rs_fits_both_action_inputs_of_a_ppo_victim_and_keeps_the_worst(ppo_ckpt, sac_ckpt, monkeypatch, tmp_path):
    """Each input fits its own critic on its own actions and attacks through its own action: recorded per call."""
    calls, fit = [], robust_sarsa.fit_sarsa
    monkeypatch.setattr(robust_sarsa, "fit_sarsa",
                        lambda *a, **k: calls.append(("fit", k["raw_actions"])) or fit(*a, **k))
    init = pgd.PGDAttacker.__init__

    def recording_init(self, *a, **k):
        calls.append((type(self).__name__, k.get("through_mean", False)))
        init(self, *a, **k)

    monkeypatch.setattr(pgd.PGDAttacker, "__init__", recording_init)
    row = robust_sarsa.evaluate(common.load_victim(ppo_ckpt), rs_args(tmp_path))
    assert calls == [("fit", True), ("PGDAttacker", True), ("SarsaMADAttacker", True),
                     ("fit", False), ("PGDAttacker", False), ("SarsaMADAttacker", False)]
    assert [(r["action_input"], r["objective"]) for r in row["per_setting"]] == \
        [(i, o) for i in ("mean", "executed") for o in ("rs", "rs_mad")]
    assert row["stats"].mean == min(r["mean"] for r in row["per_setting"]) == row["strongest"]["mean"]
    assert row["search"]["action_inputs"] == ["mean", "executed"]
    row = robust_sarsa.evaluate(common.load_victim(ppo_ckpt), rs_args(tmp_path, rs_action="mean"))
    assert {r["action_input"] for r in row["per_setting"]} == {"mean"}
    sac_victim = common.load_victim(sac_ckpt)  # one input: nothing is clipped
    row = robust_sarsa.evaluate(sac_victim, rs_args(tmp_path, rs_action="mean"))
    assert {r["action_input"] for r in row["per_setting"]} == {"executed"}
    with pytest.raises(common.AttackError, match="PPO-kind"):
        pgd.PGDAttacker(sac_victim, critic=sac_victim.critic, through_mean=True)


def test_interval_bounds_contain_the_critic_on_the_ball():
    torch.manual_seed(0)
    q = sac.TwinCritic(5, 2, [32, 32])
    obs, act, eps = torch.randn(64, 5), torch.rand(64, 2) * 2 - 1, 0.1
    lower, upper = robust_sarsa.interval_bounds(q, obs, act, eps)
    with torch.no_grad():
        center = q(obs, act)
        assert (lower <= center + 1e-5).all() and (center <= upper + 1e-5).all()
        for _ in range(200):
            z = torch.cat([obs, act], -1) + eps * (2 * torch.rand(64, 7) - 1)
            value = q(z[:, :5], z[:, 5:])
            assert (lower <= value + 1e-5).all() and (value <= upper + 1e-5).all()
        # and the box is not vacuous: the width shrinks with the radius
        l2, u2 = robust_sarsa.interval_bounds(q, obs, act, eps / 10)
    assert ((u2 - l2) < (upper - lower)).all()


# --- learned attackers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("module,algo", [(sa_rl, "sac"), (sa_rl, "ppo"), (pa_ad, "sac"), (pa_ad, "ppo")])
def test_learned_attackers_train_save_and_reload(victim, tmp_path, module, algo):
    args = learned_args(algo=algo, save_dir=str(tmp_path))
    result = module.evaluate(victim, args)
    assert result["attacker_path"].startswith(str(tmp_path))
    assert len(result["per_config"]) == (1 if algo == "sac" else 2)  # quick preset: 1 SAC seed, 2 PPO configurations
    assert result["search"]["preset"] == "quick" and result["search"]["budget"] == 300
    reloaded = module.evaluate(victim, learned_args(algo=algo, load=result["attacker_path"]))
    assert reloaded["stats"].returns == result["stats"].returns
    with pytest.raises(common.AttackError, match="is not a"):
        other = sa_rl if module is pa_ad else pa_ad
        other.evaluate(victim, learned_args(algo=algo, load=result["attacker_path"]))


class Stopped(Exception):
    pass


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_a_stopped_attacker_training_continues_exactly_where_it_was(sac_ckpt, tmp_path, capsys, algo):
    """Stopped after its training state was saved mid-episode (HalfCheetah's episodes last 1000 steps; SAC saves
    at 700, before its first update at 751; PPO, annealing its lr, after its 128-step rollout ending at 512),
    continued from the file: the networks equal an uncut run's bit for bit, across the episode end and the reset
    that follows it. A damaged file, or another attacker's under the same name, costs that attacker's progress."""
    victim = common.load_victim(sac_ckpt)
    path = str(tmp_path / "attacker.partial.pt")
    realize = sa_rl.realizer(victim)

    def train(progress_path=None, stop_after=None, key=None, env_steps=None):
        def counted(obs_n, action):
            if env_steps is not None:
                env_steps.append(1)
            return realize(obs_n, action)

        def on_update(step, *_):
            if stop_after is not None and step > stop_after:
                raise Stopped

        env = rl.AttackEnv(victim, victim.obs_dim, counted, "sa_rl")
        common_args = dict(on_update=on_update, progress_path=progress_path, progress_key=key or {"victim": "a"})
        if algo == "sac":
            return rl.train_sac(env, 1200, 3, (16, 16), learning_starts=750, batch_size=32, save_every=700,
                                **common_args)
        return rl.train_ppo(env, 1200, 3, (16, 16), rl.PPOSettings(n_steps=128, epochs=2, minibatches=4,
                                                                    anneal_lr=True), save_every=500, **common_args)

    uncut = train()
    with pytest.raises(Stopped):
        train(path, stop_after=800 if algo == "sac" else 600)
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == (700 if algo == "sac" else 512) and 0 < saved["env"]["elapsed_steps"] < 1000
    shutil.copy(path, str(tmp_path / "other.partial.pt"))
    if algo == "ppo":  # the copy a stop commits (rl.portable_progress) is the whole state: a PPO attacker keeps no buffer
        rl.portable_progress(path, path)
    capsys.readouterr()
    env_steps: list = []
    continued = train(path, env_steps=env_steps)
    assert len(env_steps) == 1200 - saved["step"] and "continuing its training at step" in capsys.readouterr().out
    assert uncut.state_dict().keys() == continued.state_dict().keys()
    for name, tensor in uncut.state_dict().items():
        assert torch.equal(tensor, continued.state_dict()[name]), name
    with open(tmp_path / "damaged.partial.pt", "wb") as f:
        f.write(b"not a torch file")
    for other, line in (("other", "holds the training of another attacker"), ("damaged", "not a readable training")):
        env_steps.clear()
        with pytest.raises(Stopped):  # its first update: far enough to see where it began
            train(str(tmp_path / f"{other}.partial.pt"), stop_after=0, key={"victim": "b"}, env_steps=env_steps)
        assert len(env_steps) == (751 if algo == "sac" else 128) and line in capsys.readouterr().out


def test_a_portable_sac_training_state_continues_with_its_replay_buffer_refilled(sac_ckpt, tmp_path, capsys):
    """The state a stop commits (rl.portable_progress) has no replay buffer: a SAC attacker's updates start again
    once a batch is refilled, and every refill's step is noted, across two stops. (A PPO attacker's continues
    exactly: the test above.)"""
    victim = common.load_victim(sac_ckpt)
    realize, path, portable = sa_rl.realizer(victim), str(tmp_path / "a.partial.pt"), str(tmp_path / "a.progress.pt")

    def train(progress_path, stop_after=None, updates=None, notes=None):
        def on_update(step, *_):
            if stop_after is not None and step > stop_after:
                raise Stopped
            if updates is not None:
                updates.append(step)

        env = rl.AttackEnv(victim, victim.obs_dim, realize, "sa_rl")  # saved at 400, 800 and 1200
        return rl.train_sac(env, 1300, 3, (16, 16), learning_starts=750, batch_size=32, save_every=400, notes=notes,
                            on_update=on_update, progress_path=progress_path, progress_key={"victim": "a"})

    with pytest.raises(Stopped):
        train(path, stop_after=850)
    rl.portable_progress(path, portable)
    assert "buffer" not in torch.load(portable, weights_only=True)
    assert "buffer" in torch.load(path, weights_only=True)  # the machine's own copy keeps it
    capsys.readouterr()
    updates: list = []
    with pytest.raises(Stopped):  # a fresh clone, stopped again
        train(portable, stop_after=1250, updates=updates)
    assert "refilling from empty at step 800" in capsys.readouterr().out
    assert updates == list(range(800 + 32, 1251))  # one batch of new data first
    rl.portable_progress(portable, portable)
    updates, notes = [], {}
    train(portable, updates=updates, notes=notes)
    assert updates == list(range(1200 + 32, 1301)) and notes == {rl.REFILLED_AT: [800, 1200]}
    with pytest.raises(common.AttackError, match="not a readable training state"):
        rl.portable_progress(str(tmp_path / "absent.partial.pt"), str(tmp_path / "x.progress.pt"))


def test_a_search_continues_from_a_committed_state_and_records_the_refill(victim, tmp_path, monkeypatch):
    """A machine holding an older state than the one committed (here: its own at step 100, the commit at 200)
    continues the later one; its record and the column's per-configuration entry list the refill (also when it
    is evaluated again on other episodes), and both state files are gone once the attacker is saved."""
    monkeypatch.setattr(rl, "SAVE_EVERY", 100)
    save = rl.save_progress

    def stop_after_200(path, key, env, loop):
        save(path, key, env, loop)
        if loop()["step"] == 100:
            shutil.copy(path, str(tmp_path / "older"))
        if loop()["step"] == 200:
            raise Stopped

    monkeypatch.setattr(rl, "save_progress", stop_after_200)
    with pytest.raises(Stopped):
        sa_rl.evaluate(victim, learned_args(algo="sac", save_dir=str(tmp_path)))
    (partial,) = glob.glob(str(tmp_path / "*.partial.pt"))
    rl.portable_progress(partial, partial[:-len(".partial.pt")] + ".progress.pt")
    os.replace(tmp_path / "older", partial)
    monkeypatch.setattr(rl, "save_progress", save)
    result = sa_rl.evaluate(victim, learned_args(algo="sac", save_dir=str(tmp_path)))
    with open(result["attacker_path"][:-3] + ".json") as f:
        assert json.load(f)[rl.REFILLED_AT] == [200]
    assert result["per_config"][0][rl.REFILLED_AT] == [200]
    assert not glob.glob(str(tmp_path / "*.partial.pt")) and not glob.glob(str(tmp_path / "*.progress.pt"))
    again = sa_rl.evaluate(victim, learned_args(algo="sac", save_dir=str(tmp_path), episodes=1))  # other episodes
    assert again["per_config"][0][rl.REFILLED_AT] == [200]  # how it was trained stays with it


def test_a_search_saves_its_attackers_training_and_removes_the_state_when_done(victim, tmp_path, monkeypatch):
    monkeypatch.setattr(rl, "SAVE_EVERY", 100)
    saved_steps, save = [], rl.save_progress
    monkeypatch.setattr(rl, "save_progress", lambda path, key, env, loop: (saved_steps.append(loop()["step"]),
                                                                            save(path, key, env, loop)))
    result = sa_rl.evaluate(victim, learned_args(algo="sac", save_dir=str(tmp_path)))
    assert saved_steps == [100, 200]  # budget 300: every 100 steps but the last
    assert os.path.isfile(result["attacker_path"]) and not glob.glob(str(tmp_path / "*.partial.pt"))


def test_a_damaged_trained_attacker_is_retrained_not_a_stop(victim, capsys, tmp_path):
    """An attacker file damaged outside this code (saves are atomic) costs that attacker, not the search."""
    config = learned.AttackerConfig("sa_rl", "ppo", budget=300, seed=1000, hidden=(16, 16),
                                    ppo=rl.PPOSettings(n_steps=150))
    realize = sa_rl.realizer(victim)
    first = learned.train_one(victim, config, realize, victim.obs_dim, str(tmp_path), episodes=1, eval_seed=0)
    with open(first["path"], "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    again = learned.train_one(victim, config, realize, victim.obs_dim, str(tmp_path), episodes=2, eval_seed=0)
    assert f"{first['path']} is not a readable attacker file" in capsys.readouterr().out
    assert again["train_seconds"] > 0 and again["returns"][0] == first["returns"][0]  # the same seed, retrained
    rl.load_attacker(first["path"], victim, "sa_rl")  # saved whole again


def test_gae_matches_hand_computation():
    r = np.array([1.0, 2.0, 3.0, 4.0])
    v = np.array([0.5, 0.4, 0.3, 0.2])
    v_next = np.array([0.4, 0.3, 9.0, 0.1])  # index 2: true next state of a truncated episode
    term = np.array([0.0, 0.0, 0.0, 1.0])
    end = np.array([0.0, 0.0, 1.0, 1.0])
    g, lam = 0.9, 0.8
    d = r + g * (1 - term) * v_next - v
    a3 = d[3]
    a2 = d[2]
    a1 = d[1] + g * lam * a2
    a0 = d[0] + g * lam * a1
    adv, ret = rl.gae(r, v, v_next, term, end, g, lam)
    np.testing.assert_allclose(adv, [a0, a1, a2, a3])
    np.testing.assert_allclose(ret, adv + v)


# --- eval_all -----------------------------------------------------------------------------------------------
def test_eval_all_writes_every_column_and_the_worst(tmp_path):
    train = run_script("sac_valt_soft.py", "--env-id", "Hopper-v4", "--total-timesteps", "300", "--run-name", "v",
                       *TINY, "--kappa", "2", cwd=str(tmp_path))
    assert train.returncode == 0, train.stderr[-2000:]
    ckpt = tmp_path / "runs/v/model.pt"
    proc = run_script("attacks/eval_all.py", "--ckpt", str(ckpt), "--episodes", "1", "--attack-budget", "200",
                      "--seeds", "1", "--learning-starts", "100", "--attacker-hidden", "16", "16", "--ppo-steps", "100",
                      "--rs-steps", "200", "--rs-updates", "20", "--rs-settings", "0.05:0.1", "--rs-hidden", "16", "16",
                      "--pgd-steps", "2", "--mad-steps", "2", "--pa-steps", "2", cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "runs/v/model_attacks.json").read_text())
    expected = set(eval_all.ATTACKS)  # a VALT-SOFT checkpoint adds its own adversary
    assert set(row["attacks"]) == expected
    means = {n: a["mean"] for n, a in row["attacks"].items() if n != "natural"}  # natural is not an attack
    assert row["worst"]["mean"] == min(means.values()) and row["worst"]["attack"] == min(means, key=means.get)
    md = (tmp_path / "runs/v/model_attacks.md").read_text()
    for label, _, _ in eval_all.ATTACKS.values():
        assert label in md
    assert "Worst" in md and "seconds per attacker" in proc.stdout and "estimated at most" in proc.stdout


def test_eval_all_on_a_ppo_checkpoint_runs_every_column_with_pgd_min_v(ppo_ckpt, tmp_path):
    """Every attacker works on a PPO-kind victim; the PGD column minimises V and says so."""
    proc = run_script("attacks/eval_all.py", "--ckpt", ppo_ckpt, "--episodes", "1", "--attack-budget", "200",
                      "--seeds", "1", "--learning-starts", "100", "--attacker-hidden", "16", "16", "--ppo-steps", "100",
                      "--rs-steps", "200", "--rs-updates", "20", "--rs-settings", "0.05:0.1", "--rs-hidden", "16", "16",
                      "--pgd-steps", "2", "--mad-steps", "2", "--pa-steps", "2", "--save-dir", str(tmp_path / "att"),
                      cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PPO-kind victim: the PGD column is PGD (minV)" in proc.stdout
    row = json.loads(open(ppo_ckpt.replace(".pt", "_attacks.json")).read())
    assert row["kind"] == "ppo" and set(row["attacks"]) == set(eval_all.DEFAULT_ATTACKS)
    assert row["attacks"]["pgd"]["column"] == "PGD (minV)"
    assert row["attacks"]["pgd"]["settings"]["objective"] == "min V(s~)"
    md = open(ppo_ckpt.replace(".pt", "_attacks.md")).read()
    assert "PGD (minV)" in md and "PGD (minQ)" not in md


def test_eval_all_update_replaces_columns_and_reuse_copies_only_identical_ones(sac_ckpt, tmp_path, capsys):
    """--update re-runs a column and keeps the rest, the old value on record; --reuse copies a column only from a
    byte-identical checkpoint's row with the same settings, and re-runs the others."""
    ckpt = str(tmp_path / "m.pt")
    shutil.copyfile(sac_ckpt, ckpt)
    quick = ["--episodes", "1", "--pgd-restarts", "2"]
    eval_all.main(["--ckpt", ckpt, "--attacks", "natural,uniform,pgd", "--pgd-steps", "1", *quick])
    first = json.load(open(tmp_path / "m_attacks.json"))
    eval_all.main(["--ckpt", ckpt, "--attacks", "pgd", "--pgd-steps", "3", "--update", *quick])
    row = json.load(open(tmp_path / "m_attacks.json"))
    assert set(row["attacks"]) == {"natural", "uniform", "pgd"}
    assert row["attacks"]["natural"] == first["attacks"]["natural"] and row["attacks"]["pgd"]["settings"]["steps"] == 3
    assert row["replaced"]["pgd"] == [{k: first["attacks"]["pgd"][k] for k in ("mean", "std", "settings")}]
    means = {n: a["mean"] for n, a in row["attacks"].items() if n != "natural"}
    assert row["worst"]["attack"] == min(means, key=means.get)
    with pytest.raises(common.AttackError, match="episodes=1, this run 2"):  # a row's columns share its episodes
        eval_all.main(["--ckpt", ckpt, "--attacks", "pgd", "--update", "--episodes", "2"])

    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(ckpt, copy / "m.pt")
    capsys.readouterr()
    eval_all.main(["--ckpt", str(copy / "m.pt"), "--attacks", "natural,pgd", "--pgd-steps", "4", *quick,
                   "--reuse", str(tmp_path / "m_attacks.json")])
    out = capsys.readouterr().out
    reused = json.load(open(copy / "m_attacks.json"))
    assert "Natural" in out and out.count("reused from") == 1  # natural's settings match; pgd's (4 steps) do not
    assert reused["attacks"]["natural"]["returns"] == row["attacks"]["natural"]["returns"]
    assert reused["attacks"]["pgd"]["settings"]["steps"] == 4 and "reused_from" not in reused["attacks"]["pgd"]
    eval_all.main(["--ckpt", str(copy / "m.pt"), "--attacks", "pgd", "--pgd-steps", "3", *quick,
                   "--reuse", str(tmp_path / "m_attacks.json")])
    pgd_column = json.load(open(copy / "m_attacks.json"))["attacks"]["pgd"]
    assert pgd_column["reused_from"] and pgd_column["returns"] == row["attacks"]["pgd"]["returns"]
    torch.save({**torch.load(ckpt, weights_only=True), "global_step": 1}, copy / "m.pt")  # another model now
    with pytest.raises(common.AttackError, match="not byte-identical"):
        eval_all.main(["--ckpt", str(copy / "m.pt"), "--attacks", "pgd", "--reuse", str(tmp_path / "m_attacks.json")])
    with pytest.raises(common.AttackError, match="made on another model"):  # its row belongs to the model before
        eval_all.main(["--ckpt", str(copy / "m.pt"), "--attacks", "natural", "--update", *quick])
    with pytest.raises(common.AttackError, match="without --update"):
        eval_all.main(["--ckpt", ckpt, "--attacks", "pgd", "--update", "--video", *quick])


def test_a_rows_file_paths_are_written_relative_to_it_and_read_back_from_wherever_it_lies(tmp_path):
    """A study cloned to another folder replays its learned attackers: the row stores their paths relative to
    itself; a row written with absolute paths (before) still reads, and is rewritten relative on --update."""
    study = tmp_path / "study" / "models"
    attacker = str(study / "attackers" / "a.pt")
    row = {"attacks": {"natural": {"mean": 1.0},
                       "sa_rl_sac": {"attacker_path": attacker, "per_config": [{"id": "c", "path": attacker}]}},
           "video": {"path": str(study / "m_natural_vs_sa_rl_sac.mp4")}}
    written = common.paths_relative_to(row, str(study))
    assert row["attacks"]["sa_rl_sac"]["attacker_path"] == attacker  # the row in memory is untouched
    assert written["attacks"]["sa_rl_sac"]["attacker_path"] == os.path.join("attackers", "a.pt")
    assert written["attacks"]["sa_rl_sac"]["per_config"][0]["path"] == os.path.join("attackers", "a.pt")
    assert written["video"]["path"] == "m_natural_vs_sa_rl_sac.mp4"
    clone = tmp_path / "clone" / "models"
    read = common.paths_absolute_from(json.loads(json.dumps(written)), str(clone))
    assert read["attacks"]["sa_rl_sac"]["attacker_path"] == str(clone / "attackers" / "a.pt")
    assert read["video"]["path"] == str(clone / "m_natural_vs_sa_rl_sac.mp4")
    old = common.paths_absolute_from(json.loads(json.dumps(row)), str(clone))
    assert old["attacks"]["sa_rl_sac"]["per_config"][0]["path"] == attacker
    # a row copied into another folder (a sweep's median-seed suite) is re-based on it
    study.mkdir(parents=True)
    (study / "m_attacks.json").write_text(json.dumps(written))
    common.copy_row(str(study / "m_attacks.json"), str(tmp_path / "study" / "attacks" / "m.json"))
    copied = json.loads((tmp_path / "study" / "attacks" / "m.json").read_text())
    assert copied["attacks"]["sa_rl_sac"]["attacker_path"] == os.path.join("..", "models", "attackers", "a.pt")


def test_a_rows_file_outside_its_git_work_tree_keeps_its_absolute_path(tmp_path):
    """A clone carries what lies in the work tree: a file there is written relative (even above the row's folder);
    one outside it (a --save-dir elsewhere on the machine) stays absolute, so a moved clone still finds it."""
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "worktree").mkdir()
    (tmp_path / "worktree" / ".git").write_text("gitdir: ../repo/.git/worktrees/w\n")  # a git worktree's marker
    assert common.work_tree_root(str(tmp_path / "worktree" / "results")) == str(tmp_path / "worktree")
    models = tmp_path / "repo" / "results" / "models"
    inside, outside = str(tmp_path / "repo" / "attackers" / "a.pt"), str(tmp_path / "scratch" / "b.pt")
    row = {"attacks": {"sa_rl_sac": {"attacker_path": inside, "per_config": [{"id": "a", "path": inside},
                                                                             {"id": "b", "path": outside}]}}}
    written = common.paths_relative_to(row, str(models))
    assert written["attacks"]["sa_rl_sac"]["attacker_path"] == os.path.join("..", "..", "attackers", "a.pt")
    assert written["attacks"]["sa_rl_sac"]["per_config"][1]["path"] == outside
    assert common.work_tree_root(str(models)) == str(tmp_path / "repo")
    read = common.paths_absolute_from(written, str(tmp_path / "moved" / "results" / "models"))
    assert read["attacks"]["sa_rl_sac"]["per_config"][1]["path"] == outside
    assert read["attacks"]["sa_rl_sac"]["attacker_path"] == str(tmp_path / "moved" / "attackers" / "a.pt")


def test_the_suite_estimate_matches_measured_time_on_fixed_length_episodes(monkeypatch):
    """HalfCheetah episodes always last 1000 steps, so the estimate of a per-step attack is a prediction, not a
    bound: within 3x of the time the attack then takes, for episodes run side by side (3: the batched perturbation is
    shared). Both are timed in this process's CPU seconds on one torch thread (no pool threads spinning), so
    trainings sharing the machine (a load that changes between the unit timings and the run) do not enter."""
    monkeypatch.setattr(estimate, "time", types.SimpleNamespace(perf_counter=time.process_time))
    ckpt = os.path.join(os.path.dirname(__file__), "data", "sac_halfcheetah_30k.pt")
    args = eval_all.parse(eval_all.Args, "", ["--ckpt", ckpt, "--episodes", "3", "--pgd-restarts", "4"])
    victim = common.victim_from_args(ckpt, args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        costs = estimate.UnitCosts(victim, args)
        assert costs.episode_steps == 1000
        for name, module in (("natural", natural), ("pgd", pgd)):
            predicted, work = estimate.plan(name, victim, args, costs)
            start = time.process_time()
            module.evaluate(victim, args)
            assert 1 / 3 < predicted / (time.process_time() - start) < 3, (name, predicted, work)
    finally:
        torch.set_num_threads(threads)


def test_the_suite_estimate_counts_each_attacks_work(ppo_ckpt, capsys):
    args = eval_all.parse(eval_all.Args, "", ["--ckpt", ppo_ckpt, "--episodes", "2", "--rs-grid", "quick",
                                              "--rs-updates", "10", "--rs-steps", "100", "--attack-budget", "300"])
    victim = common.victim_from_args(ppo_ckpt, args)
    costs = estimate.UnitCosts(victim, args)
    assert "8 Sarsa critics (quick grid), 10 updates and 4 attacked" in estimate.plan("rs", victim, args, costs)[1]
    ppo_args = copy.copy(args)
    ppo_args.algo = "ppo"
    seconds, work = estimate.plan("pa_ad_ppo", victim, ppo_args, costs)
    assert work == "2 PPO attackers (quick search) of 300 steps" and seconds > 0
    total = estimate.announce([("natural", args), ("rs", args)], victim)
    out = capsys.readouterr().out
    assert "estimated at most" in out and "8 Sarsa critics" in out and total > 0


def test_progress_eta_follows_the_recent_rate(monkeypatch):
    """A slow phase after a fast one (an attacker's warm-up, then its updates): the ETA is the recent rate's."""
    clock = iter([0.0, 10.0, 110.0])
    monkeypatch.setattr(common.time, "time", lambda: next(clock))
    progress = common.Progress(300)
    assert progress(100) == "10s, eta 20s"  # 100 units in 10 s
    assert progress(200) == "110s, eta 100s"  # the next 100 took 100 s: 100 left take 100 s, not 55


@pytest.mark.parametrize("args,message", [
    (["--attacks", "natural,nope"], "unknown attacker"),
    (["--eps", "-1"], "must be > 0"),
    (["--eps", "0"], "must be > 0"),
])
def test_eval_all_bad_input(sac_ckpt, tmp_path, args, message):
    proc = run_script("attacks/eval_all.py", "--ckpt", sac_ckpt, "--episodes", "1", *args, cwd=str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_attack_cli_rejects_missing_and_corrupt_checkpoints(tmp_path):
    (tmp_path / "bad.pt").write_text("garbage")
    for path, message in [("missing.pt", "checkpoint not found"), ("bad.pt", "not a readable checkpoint")]:
        proc = run_script("attacks/pgd.py", "--ckpt", path, cwd=str(tmp_path))
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_own_adversary_only_for_checkpoints_that_carry_one(victim):
    assert not valt_soft_adv.has_adversary(victim)
    with pytest.raises(common.AttackError, match="carries no adversary"):
        valt_soft_adv.OwnAdversaryAttacker(victim)


# --- the learned-attacker search ----------------------------------------------------------------------------
def test_search_presets_have_the_reference_sizes():
    paper_ppo = learned.preset_configs("sa_rl", "ppo", "paper", "HalfCheetah-v4")
    assert len(paper_ppo) == 216 and {c.budget for c in paper_ppo} == {1_000_000}  # the ATLA scan
    assert len({c.id for c in paper_ppo}) == 216
    pa = learned.preset_configs("pa_ad", "ppo", "paper", "Ant-v4")
    assert len(pa) == 217 and {c.budget for c in pa} == {10_000_000}  # + PA-AD's tuned setting; Ant 10M
    assert any(c.ppo.lr == 3e-5 and c.ppo.value_lr == 3e-5 and c.ppo.clip == 0.4 for c in pa)
    assert {c.budget for c in learned.preset_configs("sa_rl", "ppo", "paper", "Ant-v4")} == {5_000_000}
    paper_sac = learned.preset_configs("sa_rl", "sac", "paper", "Hopper-v4")
    assert len(paper_sac) == 4 and {c.budget for c in paper_sac} == {500_000}  # the victim's own budget
    quick = learned.preset_configs("pa_ad", "ppo", "quick", "Hopper-v4", budget=30_000)
    assert len(quick) == 2 and {c.budget for c in quick} == {30_000}
    # the ids name the committed attackers (results/halfcheetah_1m/models/attackers/): they must not drift
    assert [c.id for c in learned.preset_configs("sa_rl", "ppo", "quick", "HalfCheetah-v4", budget=200_000)] == [
        "sa_rl_ppo_lr0.0003_vlr0.0001_clip0.2_ent0_anneal0_std0.5_h64x64_n2048_b200000_s1000",
        "sa_rl_ppo_lr0.001_vlr0.0001_clip0.4_ent0_anneal0_std0.5_h64x64_n2048_b200000_s1000"]
    assert learned.preset_configs("pa_ad", "sac", "quick", "HalfCheetah-v4", budget=200_000)[0].id == \
        "pa_ad_sac_h256x256_ls5000_b200000_s1000"
    paper = learned.preset_configs("sa_rl", "ppo", "paper", "HalfCheetah-v4")
    assert paper[10].id == "sa_rl_ppo_lr0.0003_vlr3e-05_clip0.2_ent1e-05_anneal1_std0.5_h64x64_n2048_b1000000_s1000"
    # records and resume keys keep the flat form older training states were saved under
    assert paper[10].as_record() == {"kind": "sa_rl", "algo": "ppo", "budget": 1_000_000, "seed": 1000,
                                     "hidden": (64, 64), "lr": 3e-4, "value_lr": 3e-5, "clip": 0.2, "ent_coef": 1e-5,
                                     "anneal_lr": True, "initial_std": 0.5, "n_steps": 2048, "learning_starts": 5000}
    # a PPO setting no search varies still names its own attacker, and its record says it
    tuned = learned.AttackerConfig("sa_rl", "ppo", 1_000_000, 1000, (64, 64),
                                   ppo=dataclasses.replace(paper[10].ppo, epochs=5, gamma=0.995))
    assert tuned.id == ("sa_rl_ppo_lr0.0003_vlr3e-05_clip0.2_ent1e-05_anneal1_std0.5_h64x64_n2048_ep5_g0.995"
                        "_b1000000_s1000")
    assert tuned.as_record() == {**paper[10].as_record(), "epochs": 5, "gamma": 0.995}


@pytest.mark.xdist_group("ray")  # starts Ray: see tests/test_sweep.py
def test_search_resumes_and_eval_all_reads_the_trained_attackers(sac_ckpt, tmp_path, monkeypatch):
    """The Ray CLI trains the grid, continuing the attacker whose training an earlier search left half done (in its
    storage) and the one whose state a stop committed (<name>.progress.pt in the save dir, shipped with its task),
    removing both states once their attackers have landed; a re-run and eval_all's column find every attacker and train
    nothing."""
    from attacks import search

    common_args = ["--ckpt", sac_ckpt, "--episodes", "1", "--attack-budget", "200", "--attacker-hidden", "16", "16",
                   "--ppo-steps", "100", "--save-dir", str(tmp_path / "att")]
    first = learned.preset_configs("sa_rl", "ppo", "quick", "Hopper-v4", 200, hidden=(16, 16), n_steps=100)[0]
    monkeypatch.setattr(rl, "SAVE_EVERY", 100)
    save = rl.save_progress

    def stopped_after_a_save(*a):
        save(*a)
        raise Stopped

    monkeypatch.setattr(rl, "save_progress", stopped_after_a_save)
    second = learned.preset_configs("sa_rl", "ppo", "quick", "Hopper-v4", 200, hidden=(16, 16), n_steps=100)[1]
    for cfg in (first, second):
        with open(sac_ckpt, "rb") as f, pytest.raises(Stopped):
            search.remote_train({os.path.basename(sac_ckpt): f.read()}, {"ckpt": os.path.basename(sac_ckpt),
                                "eps": None, "env_id": None, "env_kwargs": None, "vecnormalize": None}, {}, cfg, 1, 0,
                                False, 2, 2, 1.0, 1.0, 1, str(tmp_path / "att"), "")
    left, committed = (tmp_path / "att" / search.progress_name(common.load_victim(sac_ckpt), cfg, "")
                       for cfg in (first, second))
    states = {}
    for cfg, path in ((first, left), (second, committed)):
        state = torch.load(path, weights_only=True)
        assert state["step"] == 100
        torch.save({**state, "step": 200}, path)  # "at the end of its budget": its task can only land this very policy
        states[cfg] = state
    # the second's state as a stop commits it, and as a fresh clone has it: no .partial.pt
    rl.portable_progress(str(committed), str(committed)[:-len(".partial.pt")] + ".progress.pt")
    committed.unlink()
    committed = committed.with_name(committed.name[:-len(".partial.pt")] + ".progress.pt")
    proc = run_script("attacks/search.py", *common_args, "--columns", "sa_rl_ppo", "--local-cpus", "1",
                      cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| sa_rl_ppo | 2 | 200 |" in proc.stdout
    assert not left.exists() and not committed.exists() and not list((tmp_path / "att").glob("*.p*.pt"))
    for cfg, state in states.items():
        landed = torch.load(learned.attacker_path(common.load_victim(sac_ckpt), cfg, str(tmp_path / "att")),
                            weights_only=True)["attacker"]
        assert landed.keys() == state["policy"].keys()
        assert all(torch.equal(v, state["policy"][k]) for k, v in landed.items())
    proc = run_script("attacks/search.py", "--ckpt", sac_ckpt, "--address", "auto", cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--storage" in proc.stderr
    records = sorted((tmp_path / "att").glob("*.json"))
    assert len(records) == 2
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "att").iterdir()}
    proc = run_script("attacks/eval_all.py", *common_args, "--attacks", "sa_rl_ppo", cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "att").iterdir()} == stamps  # nothing retrained
    row = json.loads(open(sac_ckpt.replace(".pt", "_attacks.json")).read())
    column = row["attacks"]["sa_rl_ppo"]
    assert column["search"]["preset"] == "quick" and column["search"]["configurations"] == 2
    assert column["mean"] == min(json.loads(p.read_text())["mean"] for p in records)
    assert "learned quick" in row["search"]
    assert not os.path.isabs(column["attacker_path"])  # relative to the row's folder: a clone finds its attacker
    assert os.path.isfile(os.path.join(os.path.dirname(sac_ckpt), column["attacker_path"]))
    # the study cloned elsewhere: the same checkpoint at another path finds its attackers by content
    moved = tmp_path / "elsewhere" / os.path.basename(sac_ckpt)
    moved.parent.mkdir()
    shutil.copyfile(sac_ckpt, moved)
    moved_args = [str(moved) if a == sac_ckpt else a for a in common_args]
    proc = run_script("attacks/eval_all.py", *moved_args, "--attacks", "sa_rl_ppo", cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "att").iterdir()} == stamps
    # its save dir cloned too: the row names the attackers where they lie now, not the paths their records were made at
    clone = tmp_path / "elsewhere" / "att"
    shutil.copytree(tmp_path / "att", clone)
    cloned_args = [str(clone) if a == str(tmp_path / "att") else a for a in moved_args]
    proc = run_script("attacks/eval_all.py", *cloned_args, "--attacks", "sa_rl_ppo", cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in clone.iterdir()) == sorted(p.name for p in (tmp_path / "att").iterdir())
    cloned = json.loads(open(str(moved).replace(".pt", "_attacks.json")).read())["attacks"]["sa_rl_ppo"]
    named = [cloned["attacker_path"]] + [c["path"] for c in cloned["per_config"]]
    assert len(named) == 3 and all(p.startswith(os.path.join("att", "")) for p in named)
    # records keyed by the victim's absolute path (some committed study caches) are read back at that path
    for p in records:
        record = json.loads(p.read_text())
        record["identity"] = {"victim": os.path.abspath(sac_ckpt), "victim_step": record["identity"]["victim_step"],
                              "eps": record["identity"]["eps"]}
        p.write_text(json.dumps(record))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "att").iterdir()}
    proc = run_script("attacks/eval_all.py", *common_args, "--attacks", "sa_rl_ppo", cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "att").iterdir()} == stamps
    # another radius is another attacker: trained anew, never read back from the eps-0.x files
    proc = run_script("attacks/eval_all.py", *common_args, "--attacks", "sa_rl_ppo", "--eps", "0.01", cwd=str(tmp_path),
                      timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "att").glob("*.json"))) == 4


def test_a_search_task_gets_the_victim_as_bytes_and_returns_its_attacker_as_bytes(sac_ckpt, tmp_path, monkeypatch,
                                                                                    capsys):
    """attacks/search.py's Ray task takes no path of the driver's (a cluster node may not have its filesystem): what
    it trains comes back as bytes and lands in the driver's save dir, where eval_all's cache lookup finds it. Its
    training state reaches the storage as it is saved, so a task killed after a save continues from there in a
    fresh folder (another node) and ends where an uncut task ends."""
    from attacks import search

    config = learned.preset_configs("sa_rl", "ppo", "quick", "Hopper-v4", budget=300, hidden=(16, 16), n_steps=100)[0]
    with open(sac_ckpt, "rb") as f:
        spec = {"ckpt": os.path.basename(sac_ckpt), "eps": None, "env_id": None, "env_kwargs": None,
                "vecnormalize": None}
        victim_files = {spec["ckpt"]: f.read()}
    victim = common.load_victim(sac_ckpt)
    progress = search.progress_name(victim, config, "")

    def task(storage):
        return search.remote_train(victim_files, spec, {}, config, 1, 0, False, 2, 2, 1.0, 1.0, 1, str(storage),
                                   "victim_a")

    uncut, _ = task(tmp_path / "uncut_storage")
    assert not (tmp_path / "uncut_storage").exists()  # budget 300 < 10k steps: nothing was saved on the way
    monkeypatch.setattr(rl, "SAVE_EVERY", 100)
    save = rl.save_progress

    def node_lost_after_the_save_at_200(path, key, env, loop):
        save(path, key, env, loop)
        if loop()["step"] == 200:
            raise Stopped

    monkeypatch.setattr(rl, "save_progress", node_lost_after_the_save_at_200)
    storage = tmp_path / "storage"
    with pytest.raises(Stopped):
        task(storage)
    stored = storage / "victim_a" / progress
    assert os.listdir(storage / "victim_a") == [progress] and torch.load(stored, weights_only=True)["step"] == 200
    monkeypatch.setattr(rl, "save_progress", save)
    capsys.readouterr()
    record, files = task(storage)
    assert "continuing its training at step 200" in capsys.readouterr().out
    assert record["returns"] == uncut["returns"]
    assert os.path.isfile(stored)  # removed by the driver once the attacker has landed
    save_dir = str(tmp_path / "att")
    os.makedirs(save_dir)
    path = learned.attacker_path(victim, config, save_dir)
    assert sorted(files) == sorted([os.path.basename(path), os.path.basename(path)[:-3] + ".json"])
    landed = search.land(record, files, save_dir)
    found = learned.finished_record(victim, config, save_dir, 1, 0)
    assert landed["path"] == path and found["path"] == path and found["returns"] == record["returns"]
    policy, _ = rl.load_attacker(path, victim, "sa_rl")
    assert policy is not None


def test_a_diverging_attacker_training_is_an_error(victim):
    env = rl.AttackEnv(victim, victim.obs_dim, sa_rl.realizer(victim), "sa_rl_ppo")
    with pytest.raises(common.AttackError, match="diverged"):
        rl.train_ppo(env, 400, 0, (16, 16), rl.PPOSettings(lr=1e12, value_lr=1e12, n_steps=100))


# --- golden runs of the attackers' own trainers --------------------------------------------------------------
@pytest.mark.parametrize("name", ["sa_rl_sac", "pa_ad_ppo", "rs_ppo"])
def test_attacker_training_reproduces_the_recorded_losses_bit_for_bit(name):
    """tests/attack_golden.py: the seeded tiny SAC / PPO attacker and Sarsa critic backpropagate exactly the recorded
    losses and end with exactly the recorded network, so an attacker cannot silently change (or weaken)."""
    golden = json.load(open(attack_golden.PATH))
    assert golden["torch"] == torch.__version__, f"golden file recorded with torch {golden['torch']}"
    now, want = attack_golden.run(name), golden[name]
    first = next((i for i, (a, b) in enumerate(zip(now["losses"], want["losses"])) if a != b), None)
    assert first is None, f"loss {first} differs: {now['losses'][first]!r} vs recorded {want['losses'][first]!r}"
    assert len(now["losses"]) == len(want["losses"]) and now["network_sha256"] == want["network_sha256"]


def test_mujoco_warnings_print_once_per_process_and_leave_no_log_file(tmp_path, monkeypatch, capfd):
    """gymnasium's HalfCheetah XML uses an attribute MuJoCo deprecates: an attack makes an environment per episode,
    and the warning (and a MUJOCO_LOG.TXT in the working directory) must not come with each of them."""
    from attacks import contract

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(contract, "MUJOCO_WARNED", set())
    for _ in range(3):
        contract.make_env("HalfCheetah-v4", {}).close()
    out, err = capfd.readouterr()
    assert out.count("settotalmass") == 0 and err.count("settotalmass") == 1
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
