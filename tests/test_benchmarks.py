"""The diagnostics under benchmarks/ that published numbers rest on."""
import json
import os
import shutil
import subprocess
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


def test_trained_critic_tracks_the_returns_and_the_check_uses_the_pgd_it_is_given():
    """The suite's PGD and VALT-EPS's 2-step search on the same seeded clean episode: the weak search finds less Q
    drop at the same states and costs less reward in its own attacked episode."""
    row = critic_check.check(SAC_FIXTURE, episodes=1, horizon=300, seed=3)
    assert row["clean"]["pearson"] > 0.3  # a trained critic ranks states like their soft return
    assert row["pgd"]["mean_G"] < row["clean"]["mean_G"]  # PGD (minQ) hurts the fixture
    assert row["critic_attack_drop"] > 0  # and lowers the critic's own Q at the clean states
    assert row["critic_attack_drop_attacked_states"] > 0
    assert row["pgd"]["reward_per_step"] < row["clean"]["reward_per_step"]
    training_search = {"steps": 2, "step_scale": 1.0, "restarts": 1, "start": "step"}
    weak = critic_check.check(SAC_FIXTURE, episodes=1, horizon=300, seed=3, pgd_settings=training_search)
    assert weak["clean"] == row["clean"]
    assert 0 < weak["critic_attack_drop"] < 0.9 * row["critic_attack_drop"]
    assert weak["pgd"]["reward_per_step"] > row["pgd"]["reward_per_step"]  # the episodes ran the weak search too


def test_critic_check_refuses_ppo_and_a_pgd_the_attack_refuses_in_one_line():
    with pytest.raises(critic_check.AttackError, match="SAC critic"):
        critic_check.check(PPO_FIXTURE, episodes=1, horizon=10, seed=0)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "critic_check.py"), "--ckpts", SAC_FIXTURE,
                          "--pgd-steps", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("critic_check: PGD needs steps >= 1")


def test_critic_check_out_keeps_the_rows_of_other_checkpoints_and_refuses_other_settings_before_running(tmp_path):
    out, copy = tmp_path / "cc.json", tmp_path / "copy.pt"
    shutil.copyfile(SAC_FIXTURE, copy)
    run = lambda *ckpts, steps="2": subprocess.run(  # noqa: E731
        [sys.executable, os.path.join(ROOT, "benchmarks", "critic_check.py"), "--ckpts", *ckpts, "--episodes", "1",
         "--horizon", "20", "--pgd-steps", steps, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run(SAC_FIXTURE).returncode == 0 and run(str(copy)).returncode == 0
    names = lambda: [os.path.basename(r["ckpt"]) for r in json.loads(out.read_text())["rows"]]  # noqa: E731
    assert names() == ["sac_halfcheetah_30k.pt", "copy.pt"]
    assert run(SAC_FIXTURE).returncode == 0  # measured again: replaces its row, keeps the other
    assert names() == ["copy.pt", "sac_halfcheetah_30k.pt"]
    other = run(SAC_FIXTURE, steps="3")
    assert other.returncode != 0 and "Traceback" not in other.stderr and other.stdout == ""  # before any run
    assert other.stderr.strip().splitlines()[-1].startswith(f"critic_check: {out} holds rows of other settings")
    for text, says in (("{not json", "is not readable JSON"), ("[1, 2]", "is not a file of benchmark rows")):
        out.write_text(text)
        bad = run(SAC_FIXTURE)
        assert bad.returncode != 0 and says in bad.stderr and "Traceback" not in bad.stderr and bad.stdout == ""


def test_pa_ad_director_check_runs_its_controls_and_negates_the_director(tmp_path):
    """A (tiny) director trained on the PPO fixture: every control arm is evaluated, and the negated arm's realised
    action change points against the director's direction where the director's own points along it."""
    import torch

    import pa_ad_director_check as check_mod
    from attacks import pa_ad, rl
    from attacks.common import load_victim
    from conftest import fixture_states

    victim = load_victim(PPO_FIXTURE)
    realize = pa_ad.realizer(victim, 2, 1)
    policy = rl.train_sac(rl.AttackEnv(victim, victim.act_dim, realize, "pa_ad"), 200, 0, (16, 16), learning_starts=100)
    path = str(tmp_path / "director.pt")
    rl.save_attacker(path, policy, {"kind": "pa_ad", "algo": "sac", "obs_dim": victim.obs_dim,
                                    "act_dim": victim.act_dim, "hidden": [16, 16]})
    row = check_mod.check(PPO_FIXTURE, path, episodes=1, pa_steps=2, pa_restarts=1)
    assert set(row["arms"]) == {"natural", "director", "negated director", "constant mean direction",
                                "random directions"}
    for arm in row["arms"].values():
        assert arm["reward_per_step"] == pytest.approx(arm["mean"] / arm["mean_length"])
    _, states = fixture_states(40, path=PPO_FIXTURE)
    own = lambda o: policy.deterministic(o.unsqueeze(0))[0].detach()
    for sign, arm in ((1, check_mod.DirectionAttacker("d", own, realize)),
                      (-1, check_mod.DirectionAttacker("n", lambda o: -own(o), realize))):
        torch.manual_seed(0)
        perturbed = torch.stack([arm(s) for s in states])
        with torch.no_grad():
            change = victim.actor.mean(perturbed) - victim.actor.mean(states)
            along = (change * torch.stack([own(s) for s in states])).sum(-1)
        assert (sign * along > 0).float().mean() >= 0.9
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "pa_ad_director_check.py"), "--ckpt",
                           PPO_FIXTURE, "--attacker", str(tmp_path / "missing.pt")], capture_output=True, text=True)
    assert proc.returncode == 2 and "trained attacker not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "pa_ad_director_check.py"), "--ckpt",
                           PPO_FIXTURE, "--attacker", path, "--pa-steps", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--pa-steps" in proc.stderr and "Traceback" not in proc.stderr


def test_gpu_speed_times_the_updating_phase_from_the_progress_lines(tmp_path):
    """benchmarks/gpu_speed.py reads the scripts' progress lines: a changed line format must fail here, not on a
    lent GPU. Run on whatever device is present (the CPU in CI), small budget."""
    import argparse

    import torch
    import gpu_speed

    for script in ("sac", "robust_sac", "sac_valt_eps", "sac_valt_soft"):  # every variant prints the parsed format
        with open(os.path.join(ROOT, f"{script}.py")) as f:
            assert "step {step:>9d}/{args.total_timesteps} | sps" in f.read(), script
    cmd = gpu_speed.variant_command("sac_valt_eps --compile", "Hopper-v4", 300, 600, 100)
    assert cmd[-1] == "--compile" and "--worst-rate" in cmd and cmd[cmd.index("--total-timesteps") + 1] == "600"
    a = argparse.Namespace(env="Hopper-v4", learning_starts=300, warmup_steps=100, steps=200, log_every=100)
    row = gpu_speed.measure("sac", a, timeout=600, workdir=str(tmp_path))
    assert row["returncode"] == 0 and "error" not in row, row
    # the window holds updating steps only: its rate is the run's own updating-phase rate (a window that took in the
    # random-action phase, ~10x faster, or missed steps would be far off)
    summary = torch.load(tmp_path / "sac" / "model.pt", weights_only=True)["summary"]
    assert 0.5 < row["sps"] / summary["sps_updating"] < 2, (row, summary["sps_updating"])
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_speed.py"), "--env", "Nope-v0",
                          "--count-ops"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown environment id" in bad.stderr and "Traceback" not in bad.stderr


def test_prioritized_sampling_is_a_fixed_handful_of_operations():
    """The operations a GPU launches one by one per SAC step (torch profiler, CPU): prioritized sampling is two
    searches, not a loop over tree levels (it was 265 with the 20-level sum tree)."""
    import gpu_speed

    counts = gpu_speed.count_ops("Hopper-v4")
    assert counts["prioritized sampling"] <= 40 and counts["priority write-back"] <= 16, counts
    assert sum(counts.values()) <= 340, counts
    for variant in gpu_speed.COUNTED[1:]:  # the shared replay section; each method's update on top of SAC's
        other = gpu_speed.count_ops("Hopper-v4", variant)
        assert {k: other[k] for k in other if "update (" not in k} == {k: counts[k] for k in counts if "update (" not in k}
        key = "update (forward, backward, optimizer steps)"
        assert other[key] > counts[key] + (150 if variant != "sac_ppo" else 0), (variant, other)  # its adversary runs


def test_mad_direction_reports_per_dimension_shares_and_the_defaults_reach_more_of_the_objective(capsys):
    import mad_direction

    mad_direction.main(["--ckpts", PPO_FIXTURE, "--states", "40"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[1] for r in rows] == ["references'", "defaults"]
    (old_objective, new_objective), shares = [float(r[3]) for r in rows], [[float(v) for v in r[4].split()] for r in rows]
    assert new_objective > old_objective > 0
    assert all(len(s) == 3 and abs(sum(s) - 1) < 0.01 for s in shares)  # Hopper: 3 action dimensions
    assert all(float(r[6].rstrip(" |")) > 0 for r in rows)  # the executed action moved


def test_mad_direction_on_a_missing_checkpoint_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mad_direction.py"), "--ckpts",
                           str(tmp_path / "none.pt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "none.pt" in proc.stderr


def test_upside_down_replays_the_attack_suites_episodes_and_counts_the_pitch(tmp_path):
    import upside_down
    from attacks import pgd
    from attacks.common import load_victim, rollout

    rows = upside_down.episodes(SAC_FIXTURE, 4, seed=5)
    suite = rollout(load_victim(SAC_FIXTURE), upside_down.Unperturbed(), 4, seed=5)
    assert [r["return"] for r in rows] == pytest.approx(suite.returns, abs=1e-6)
    for r in rows:
        assert (r["first"] is None) == (r["upside_down_steps"] == 0)
    # the fixture runs upright in some of these episodes and goes over its back in others (seeds 7, 8 here)
    assert {r["upside_down_steps"] > 0 for r in rows} == {True, False}
    # under PGD: the suite's PGD row, episode for episode (side by side, the same random draws)
    victim = load_victim(SAC_FIXTURE)
    attacked = upside_down.episodes(SAC_FIXTURE, 1, seed=5, attack="pgd")
    row = rollout(victim, pgd.attacker(victim, pgd.Args()), 1, seed=5)
    assert [r["return"] for r in attacked] == pytest.approx(row.returns, abs=1e-6)
    assert row.returns[0] < rows[0]["return"] - 500  # the attack ran
    with pytest.raises(upside_down.AttackError):
        upside_down.episodes(str(tmp_path / "missing.pt"), 1, 0)


def test_upside_down_replays_the_rs_columns_strongest_critic(tmp_path):
    """--attack rs: the RS column's own episodes, from the critic its row names; other Sarsa settings are refused."""
    import upside_down
    from attacks import eval_all

    ckpt = str(tmp_path / "m.pt")
    shutil.copyfile(SAC_FIXTURE, ckpt)
    with pytest.raises(upside_down.AttackError, match="RS column of"):  # no row yet
        upside_down.episodes(ckpt, 1, 0, attack="rs")
    flags = ("--rs-steps", "300", "--rs-updates", "30", "--rs-hidden", "16", "16", "--pgd-restarts", "2")
    eval_all.main(["--ckpt", ckpt, "--attacks", "rs", "--episodes", "1", "--seed", "3", "--rs-settings", "0.05:0.3",
                   "0.3:0.3", *flags])
    column = json.load(open(tmp_path / "m_attacks.json"))["attacks"]["rs"]
    returns = {(c["sarsa_eps"], c["objective"]): c["mean"] for c in column["per_setting"]}
    assert len(set(returns.values())) > 1  # the replay of another cell or objective would show
    rows = upside_down.episodes(ckpt, 1, seed=3, attack="rs", rs_flags=flags)
    assert [r["return"] for r in rows] == pytest.approx(column["returns"], abs=1e-6)
    with pytest.raises(upside_down.AttackError, match="other settings"):  # the defaults fit another critic
        upside_down.episodes(ckpt, 1, 0, attack="rs")
    with pytest.raises(upside_down.AttackError, match="hidden"):  # so would another critic size alone
        upside_down.episodes(ckpt, 1, 0, attack="rs", rs_flags=flags[:4] + ("--rs-hidden", "8", "8") + flags[7:])


def test_action_change_measures_pgd_on_the_natural_and_the_pgd_rows_episodes(tmp_path):
    import action_change
    from attacks import pgd
    from attacks.common import load_victim, rollout

    settings = pgd.Args(pgd_restarts=2)
    row = action_change.measure(SAC_FIXTURE, 1, seed=5, settings=settings)
    victim = load_victim(SAC_FIXTURE)
    assert row["clean_path"]["returns"] == pytest.approx(rollout(victim, None, 1, seed=5).returns, abs=1e-6)
    attacked = rollout(victim, pgd.attacker(victim, settings), 1, seed=5).returns
    assert row["attacked_path"]["returns"] == pytest.approx(attacked, abs=1e-6)
    assert attacked[0] < row["clean_path"]["returns"][0] - 500  # the attack ran
    for path in ("clean_path", "attacked_path"):
        change = row[path]["squared_action_change"]
        assert change["steps"] == 1000 and 0 < change["median"] <= change["p90"]
        assert change["p90"] <= 4 * victim.act_dim  # tanh actions in [-1, 1]: at most 4 per dimension


VALT_EPS_50K = os.path.join(ROOT, "results", "halfcheetah_50k", "models", "sac_valt_eps__HalfCheetah-v4__s1.pt")


def test_search_strength_replays_the_training_searches_of_sac_valt_eps():
    """The diagnostic's copies of VALT-EPS's two inner searches draw the same starts and take the same steps as the
    method script's own (same seed, same networks)."""
    import torch

    import search_strength
    from conftest import fixture_states

    sys.path.insert(0, ROOT)
    import sac_valt_eps

    victim, states = fixture_states(16, path=VALT_EPS_50K)
    settings = search_strength.training_settings(victim)
    ckpt = victim.ckpt
    args = sac_valt_eps.resolve_args(sac_valt_eps.Args(env_id=ckpt["env_id"], hidden_sizes=(256, 256), **settings))
    learner = sac_valt_eps.Learner(args, ckpt["obs_dim"], ckpt["act_dim"], ckpt["action_low"].numpy(),
                                   ckpt["action_high"].numpy(), torch.device("cpu"))
    learner.actor.load_state_dict(ckpt["actor"])
    learner.critic.load_state_dict(ckpt["critic"])
    torch.manual_seed(3)
    ours = search_strength.training_pgd(victim, settings, states)
    torch.manual_seed(3)
    theirs = learner.pgd_worst_obs(learner.critic, states)
    assert (ours - states).abs().max() > 0.5 * victim.eps  # the search moved
    assert torch.allclose(ours, theirs, atol=1e-5)
    distance = search_strength.policy_distance(victim, settings["reg_distance"])
    radius = search_strength.reg_radius(settings, victim.eps, ckpt["global_step"])
    assert radius == victim.eps  # the 50k run's ramp ends at 40k
    torch.manual_seed(4)
    ours = distance(states, search_strength.training_sgld(distance, settings, states, radius)).mean()
    torch.manual_seed(4)
    theirs = learner.sa_regularizer(states, radius)
    assert float(ours) > 0 and torch.allclose(ours, theirs, rtol=1e-4)


def test_search_strength_sets_each_search_against_its_optimum(capsys):
    import search_strength

    entry = search_strength.measure(VALT_EPS_50K, n_states=20, draws=2, max_steps=200, seed=0)
    assert set(entry["searches"]) == {"pe", "reg_at_step"}  # at 50k the regulariser's radius is already eps
    for r in entry["searches"].values():
        assert r["optimum"]["gain"] > 0 and r["optimum"]["restarts_doubling"] < 0.01
        assert 0 < r["training"]["min"] <= r["training"]["max"] <= 1.05
    pe = entry["searches"]["pe"]
    assert pe["evaluation_pgd"]["mean"] >= 0.9  # attacks/pgd.py's defaults: >= 95 % on attack_strength's victims
    assert pe["training"]["max"] < pe["evaluation_pgd"]["min"]  # 2 steps, one start: a weaker search
    search_strength.print_entry("x.pt", entry)
    assert "training search (2 steps of 1 r/steps" in capsys.readouterr().out


def test_search_strength_refuses_a_checkpoint_of_another_method():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "search_strength.py"), "--ckpts",
                           SAC_FIXTURE], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "not a VALT-EPS checkpoint" in proc.stderr


def test_search_strength_refuses_a_grid_length_it_cannot_read_in_one_line():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "search_strength.py"), "--ckpts",
                           VALT_EPS_50K, "--max-steps", "50"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "--max-steps must be one of" in proc.stderr


VALT_SOFT_50K = os.path.join(ROOT, "results", "halfcheetah_50k", "models", "sac_valt_soft__HalfCheetah-v4__s1.pt")


def test_soft_adversary_samples_as_the_method_does_and_brackets_the_boltzmann_optimum():
    """The diagnostic's nu_phi draws what sac_valt_soft.py's Adversary draws (same seed, same weights), and nu*'s
    drop lies between the uniform draws' mean (kappa -> inf) and their per-state maximum (kappa -> 0)."""
    import torch

    import soft_adversary
    from conftest import fixture_states

    sys.path.insert(0, ROOT)
    import sac_valt_soft

    victim, states = fixture_states(16, path=VALT_SOFT_50K)
    ours = soft_adversary.adversary(victim)
    theirs = sac_valt_soft.Adversary(victim.obs_dim, victim.ckpt["arch"]["hidden_sizes"], victim.eps)
    theirs.load_state_dict(victim.ckpt["adversary"])
    torch.manual_seed(5)
    mine = states + victim.eps * ours.sample(states)[0]
    torch.manual_seed(5)
    assert torch.allclose(mine, theirs.sample(states)[0].detach(), atol=1e-6)
    victim.ckpt = {**victim.ckpt, "adversary_trained": {**victim.ckpt["adversary"],
                                                          "mean.bias": torch.full((victim.obs_dim,), 3.0)}}
    mean, _ = soft_adversary.adversary(victim)(states)  # a checkpoint that keeps it: the trained one is measured
    assert float(torch.tanh(mean).abs().min()) > 0.9
    drop = soft_adversary.drop_fn(victim, states)
    assert float(drop(states).abs().max()) < 1e-4  # no perturbation, no drop
    uniform = drop(states.repeat(200, 1) + victim.eps * (2 * torch.rand(200 * 16, victim.obs_dim) - 1)).reshape(200, 16)
    hot, ess_hot = soft_adversary.boltzmann(uniform, 1e6)
    cold, ess_cold = soft_adversary.boltzmann(uniform, 1e-6)
    assert abs(hot - float(uniform.mean())) < 1e-3 and ess_hot > 0.99
    assert abs(cold - float(uniform.max(0).values.mean())) < 1e-3 and ess_cold <= 1 / 200 + 1e-6
    mid = [soft_adversary.boltzmann(uniform, k)[0] for k in (8.0, 2.0, 0.5)]
    assert hot < mid[0] < mid[1] < mid[2] < cold  # a colder optimum pushes harder


def test_soft_adversary_measures_a_checkpoint_and_refuses_other_methods_in_one_line(tmp_path):
    import soft_adversary

    entry = soft_adversary.measure(VALT_SOFT_50K, n_states=20, samples=50, draws=2, kappas=[8.0, 0.5], seed=0)
    d = entry["drop"]
    assert entry["updates_since_reset"] == 1  # saved at 50,000, a multiple of its adv_reset_every 2000
    assert 0.5 < entry["adversary_std"] < 1.5
    assert d["pgd"] > max(d["uniform"], d["adversary"], entry["boltzmann"]["0.5"]["drop"]) > 0
    split = entry["soft_value_drop"]
    assert set(split) == {"uniform", "adversary", "adversary_mean"} and all(set(v) == {"q", "entropy"} for v in split.values())
    assert split["uniform"]["q"] > 0 and abs(split["uniform"]["entropy"]) < split["uniform"]["q"] + 1.0
    out = tmp_path / "soft.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "soft_adversary.py"), "--ckpts",
                           SAC_FIXTURE, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not a VALT-SOFT checkpoint" in proc.stderr
    assert not out.exists()
