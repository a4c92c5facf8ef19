"""Victims trained elsewhere (attacks/external.py). Tiny Stable-Baselines3 SAC, TD3 and PPO models trained here, and
CleanRL SAC / PPO files saved with attacks/README.md's snippets from CleanRL's own network definitions (copied below:
cleanrl/sac_continuous_action.py, cleanrl/ppo_continuous_action.py), load as victims whose actions, Q and V are the
library's to 1e-5; every attack stays in the eps-ball or is "n/a: <reason>"; a VecNormalize file is read without
running pickled code; bad input is one line, exit code 2.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks import common, eval_all, external, mad, pgd, uniform
from attacks.common import AttackError, load_victim
from conftest import run_script

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402

PENDULUM = "InvertedPendulum-v4"  # action bounds +-3: SB3's critics see the action scaled to [-1, 1]
SHORT = '{"max_episode_steps": 25}'  # short evaluation episodes
TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:.*is out of date.*")  # the literature's -v4 tasks


def quiet():
    warnings.filterwarnings("ignore", message=".*is out of date.*")


# --- the models ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sb3_models(tmp_path_factory):
    """SB3 models, a few hundred steps each (this is about loading, not quality): SAC and TD3 on InvertedPendulum,
    SAC behind VecNormalize, PPO with the default MlpPolicy, and PPO as RL Zoo trains MuJoCo tasks (ReLU, separate
    pi / vf heads of different sizes, behind VecNormalize)."""
    quiet()
    out = tmp_path_factory.mktemp("sb3")
    off_policy = dict(learning_starts=100, batch_size=32, train_freq=2, policy_kwargs=dict(net_arch=[32, 32]), seed=0,
                      device="cpu")
    on_policy = dict(n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    zoo_kwargs = dict(activation_fn=nn.ReLU, net_arch=dict(pi=[32, 32], vf=[48, 48]), log_std_init=-2, ortho_init=False)
    specs = {"sac": (sb3.SAC, PENDULUM, False, off_policy), "sac_vn": (sb3.SAC, PENDULUM, True, off_policy),
             "td3": (sb3.TD3, PENDULUM, False, off_policy), "ppo": (sb3.PPO, "Hopper-v4", False, on_policy),
             "ppo_zoo_vn": (sb3.PPO, "Hopper-v4", True, {**on_policy, "policy_kwargs": zoo_kwargs})}
    models = {}
    for name, (cls, env_id, normalize, kwargs) in specs.items():
        env = make_vec_env(env_id, seed=0)
        env = VecNormalize(env) if normalize else env
        # a copy of policy_kwargs: SAC adds keys to the dict it is given
        model = cls("MlpPolicy", env, **{**kwargs, "policy_kwargs": dict(kwargs.get("policy_kwargs", {}))})
        model.learn(200 if cls is not sb3.PPO else 128)
        model.save(out / f"{name}.zip")
        stats = None
        if normalize:
            stats = str(out / f"{name}.pkl")
            env.save(stats)
        models[name] = dict(zip=str(out / f"{name}.zip"), vecnormalize=stats, env_id=env_id, cls=cls)
    return models


def raw_states(env_id: str, n: int = 300, seed: int = 0) -> np.ndarray:
    env, states = gym.make(env_id), []
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    while len(states) < n:
        states.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return np.array(states)


def random_actions(env_id: str, n: int, seed: int = 0) -> torch.Tensor:
    space = gym.make(env_id).action_space
    space.seed(seed)
    return torch.as_tensor(np.stack([space.sample() for _ in range(n)]))


def sb3_view(model: dict, states: np.ndarray) -> np.ndarray:
    """What SB3's policy receives for raw states: VecNormalize.normalize_obs's output, or the states themselves."""
    if not model["vecnormalize"]:
        return states
    stats = VecNormalize.load(model["vecnormalize"], DummyVecEnv([lambda: gym.make(model["env_id"])]))
    stats.training = False
    return stats.normalize_obs(states)


def sb3_victim(model: dict, **kwargs):
    eps = None if model["vecnormalize"] and model["env_id"] == "Hopper-v4" else 0.05
    return load_victim(model["zip"], eps=kwargs.pop("eps", eps), env_id=model["env_id"],
                       vecnormalize=model["vecnormalize"], **kwargs)


# CleanRL's networks, as cleanrl/sac_continuous_action.py and cleanrl/ppo_continuous_action.py define them.
class SoftQNetwork(nn.Module):
    def __init__(self, env):
        super().__init__()
        obs_dim, act_dim = np.array(env.single_observation_space.shape).prod(), np.prod(env.single_action_space.shape)
        self.fc1 = nn.Linear(obs_dim + act_dim, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Actor(nn.Module):
    LOG_STD_MAX, LOG_STD_MIN = 2, -5

    def __init__(self, env):
        super().__init__()
        self.fc1 = nn.Linear(np.array(env.single_observation_space.shape).prod(), 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc_mean = nn.Linear(256, np.prod(env.single_action_space.shape))
        self.fc_logstd = nn.Linear(256, np.prod(env.single_action_space.shape))
        self.register_buffer("action_scale", torch.tensor((env.single_action_space.high - env.single_action_space.low)
                                                          / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((env.single_action_space.high + env.single_action_space.low)
                                                         / 2.0, dtype=torch.float32))

    def forward(self, x):
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        log_std = torch.tanh(self.fc_logstd(x))
        return self.fc_mean(x), self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (log_std + 1)

    def get_action(self, x):
        mean, log_std = self(x)
        return None, None, torch.tanh(mean) * self.action_scale + self.action_bias  # (action, log_prob, mean)


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs):
        super().__init__()
        obs_dim, act_dim = np.array(envs.single_observation_space.shape).prod(), np.prod(envs.single_action_space.shape)
        self.critic = nn.Sequential(layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)),
                                    nn.Tanh(), layer_init(nn.Linear(64, 1), std=1.0))
        self.actor_mean = nn.Sequential(layer_init(nn.Linear(obs_dim, 64)), nn.Tanh(), layer_init(nn.Linear(64, 64)),
                                        nn.Tanh(), layer_init(nn.Linear(64, act_dim), std=0.01))
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))


def cleanrl_ppo_env(env_id, gamma=0.99):
    """cleanrl/ppo_continuous_action.py make_env's wrapper stack."""
    env = gym.make(env_id)
    env = gym.wrappers.FlattenObservation(env)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = gym.wrappers.ClipAction(env)
    env = gym.wrappers.NormalizeObservation(env)
    env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10), None)
    env = gym.wrappers.NormalizeReward(env, gamma=gamma)
    return gym.wrappers.TransformReward(env, lambda reward: np.clip(reward, -10, 10))


@pytest.fixture(scope="module")
def cleanrl_files(tmp_path_factory):
    """A CleanRL SAC (random weights, seeded) and a CleanRL PPO whose NormalizeObservation saw 200 steps, each saved
    with attacks/README.md's snippet; the PPO's wrapper stack is returned to normalize as CleanRL does."""
    quiet()
    out = tmp_path_factory.mktemp("cleanrl")
    torch.manual_seed(0)
    args_env_id = PENDULUM
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(args_env_id)])
    actor, qf1, qf2 = Actor(envs), SoftQNetwork(envs), SoftQNetwork(envs)
    for net in (actor, qf1, qf2):  # away from the initialisation, so a key mix-up would show
        for p in net.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
    sac_path = str(out / "sac.cleanrl_model")
    # attacks/README.md's SAC snippet:
    torch.save({"env_id": args_env_id, "actor": actor.state_dict(), "qf1": qf1.state_dict(), "qf2": qf2.state_dict()},
               sac_path)

    ppo_env_id = "Hopper-v4"
    envs = gym.vector.SyncVectorEnv([lambda: cleanrl_ppo_env(ppo_env_id)])
    agent = Agent(envs)
    with torch.no_grad():
        agent.actor_logstd.fill_(-0.5)
    envs.reset(seed=0)
    envs.single_action_space.seed(0)
    for _ in range(200):
        envs.step(np.array([envs.single_action_space.sample()]))
    ppo_path = str(out / "ppo.cleanrl_model")
    # attacks/README.md's PPO snippet:
    obs_rms = envs.envs[0].get_wrapper_attr("obs_rms")
    torch.save({"env_id": ppo_env_id, "agent": agent.state_dict(),
                "obs_rms": {"mean": torch.tensor(obs_rms.mean), "var": torch.tensor(obs_rms.var)}}, ppo_path)
    bare_path = str(out / "ppo_bare.cleanrl_model")
    torch.save(agent.state_dict(), bare_path)  # CleanRL's own --save-model: no observation statistics
    return dict(sac=sac_path, actor=actor, qf=(qf1, qf2), ppo=ppo_path, agent=agent, envs=envs, bare=bare_path)


def cleanrl_view(envs, states: np.ndarray) -> np.ndarray:
    """CleanRL's NormalizeObservation (frozen) and clip wrappers applied to raw states."""
    env, chain = envs.envs[0], []
    while hasattr(env, "env"):
        chain.append(env)
        env = env.env
    normalize = next(w for w in chain if isinstance(w, gym.wrappers.NormalizeObservation))
    clip = next(w for w in chain if isinstance(w, gym.wrappers.TransformObservation))
    normalize.update_running_mean = False
    return np.stack([clip.observation(normalize.observation(s)) for s in states])


# --- the loaded victim computes what the library computes ---------------------------------------------------------
@pytest.mark.parametrize("name", ["sac", "sac_vn", "td3", "ppo", "ppo_zoo_vn"])
def test_sb3_actions_q_and_v_match_the_library(sb3_models, name):
    model = sb3_models[name]
    victim = sb3_victim(model)
    sb3_model = model["cls"].load(model["zip"], device="cpu")
    states = raw_states(model["env_id"])
    seen = sb3_view(model, states)
    obs_n = victim.normalize(states)
    assert np.abs(obs_n.numpy() - seen).max() <= 1e-6
    actions, _ = sb3_model.predict(seen, deterministic=True)
    assert np.abs(victim.act(obs_n).numpy() - actions).max() <= TOL
    policy, obs_t = sb3_model.policy, torch.as_tensor(seen).float()
    with torch.no_grad():
        if victim.kind == "ppo":
            assert victim.eps_units == ("normalized" if model["vecnormalize"] else "raw")
            expected = policy.predict_values(obs_t).squeeze(-1)
            assert (victim.critic(obs_n) - expected).abs().max() <= TOL
            assert (victim.actor(obs_n)[1] - policy.log_std).abs().max() == 0
            return
        env_actions = random_actions(PENDULUM, len(states))
        scaled = torch.as_tensor(policy.scale_action(env_actions.numpy()))  # SB3's critics take [-1, 1] actions
        expected = torch.stack([q.squeeze(-1) for q in policy.critic(obs_t, scaled)])
        assert (victim.critic(obs_n, env_actions) - expected).abs().max() <= TOL
        if name == "td3":
            assert victim.lacks("sigma") and victim.lacks("stochastic")
        else:  # SB3 clamps log_std to [-20, 2] where ours squashes it
            mean, log_std, _ = policy.actor.get_action_dist_params(obs_t)
            ours_mean, ours_log_std = victim.actor(obs_n)
            assert (ours_mean - mean).abs().max() <= TOL and (ours_log_std - log_std).abs().max() <= TOL


def test_cleanrl_sac_and_ppo_match_their_networks(cleanrl_files):
    states = raw_states(PENDULUM)
    victim = load_victim(cleanrl_files["sac"], eps=0.05)
    assert (victim.method, victim.kind, victim.eps_units, victim.env_id) == ("cleanrl_sac", "sac", "raw", PENDULUM)
    obs = torch.as_tensor(states).float()
    with torch.no_grad():
        assert (victim.act(victim.normalize(states)) - cleanrl_files["actor"].get_action(obs)[2]).abs().max() <= TOL
        actions = random_actions(PENDULUM, len(states))
        expected = torch.stack([q(obs, actions).squeeze(-1) for q in cleanrl_files["qf"]])  # executed actions
        assert (victim.critic(victim.normalize(states), actions) - expected).abs().max() <= TOL

    actor_only = cleanrl_files["sac"].replace(".cleanrl_model", "_actor.cleanrl_model")
    torch.save({"env_id": PENDULUM, "actor": cleanrl_files["actor"].state_dict()}, actor_only)
    assert common.unavailable("pgd", load_victim(actor_only, eps=0.05)) == "n/a: no qf1/qf2 in the file"

    victim = load_victim(cleanrl_files["ppo"])  # NormalizeObservation's statistics: normalized units, Hopper's eps
    assert (victim.method, victim.kind, victim.eps_units, victim.eps) == ("cleanrl_ppo", "ppo", "normalized", 0.075)
    states = raw_states("Hopper-v4")
    seen = cleanrl_view(cleanrl_files["envs"], states)
    obs_n = victim.normalize(states)
    assert np.abs(obs_n.numpy() - seen).max() <= 1e-6
    agent = cleanrl_files["agent"]
    with torch.no_grad():
        seen_t = torch.as_tensor(seen)
        mean = agent.actor_mean(seen_t)
        clipped = torch.clamp(mean, -1.0, 1.0)  # CleanRL's ClipAction wrapper
        assert (victim.act(obs_n) - clipped).abs().max() <= TOL
        assert (victim.critic(obs_n) - agent.critic(seen_t).squeeze(-1)).abs().max() <= TOL


# --- every attack: in the ball, stronger than noise, or n/a ------------------------------------------------------
def in_ball(victim, obs_n, obs_tilde):
    return float((obs_tilde - obs_n).abs().max()) <= victim.eps + common.BALL_TOLERANCE


def batch_attack(attacker, victim, obs_n):
    return common.pgd_minimize(attacker.objective, obs_n, victim.eps, attacker.steps, attacker.step_size,
                               attacker.restarts, attacker.start)


@pytest.mark.parametrize("which", ["sac_vn", "td3", "ppo_zoo_vn", "cleanrl_sac"])
def test_pgd_lowers_the_critic_more_than_uniform_noise_and_every_perturbation_stays_in_the_ball(
        sb3_models, cleanrl_files, which):
    victim = load_victim(cleanrl_files["sac"], eps=0.05) if which == "cleanrl_sac" else sb3_victim(sb3_models[which])
    torch.manual_seed(0)
    obs_n = victim.normalize(raw_states(victim.env_id, 200, seed=1))
    attacker = pgd.PGDAttacker(victim)
    x_pgd = batch_attack(attacker, victim, obs_n)
    x_uniform = common.uniform_in_ball(obs_n, victim.eps)
    assert in_ball(victim, obs_n, x_pgd) and in_ball(victim, obs_n, x_uniform)
    with torch.no_grad():
        assert attacker.objective(obs_n, x_pgd).mean() < attacker.objective(obs_n, x_uniform).mean()
    if victim.lacks("sigma"):
        assert common.unavailable("mad", victim) == "n/a: TD3 has no sigma"
    else:
        attacker = mad.MADAttacker(victim)
        assert in_ball(victim, obs_n[:10], torch.stack([attacker(o) for o in obs_n[:10]]))
    assert in_ball(victim, obs_n[:5], torch.stack([uniform.UniformAttacker(victim)(o) for o in obs_n[:5]]))


TINY_SUITE = ["--episodes", "2", "--env-kwargs", SHORT, "--attack-budget", "120", "--seeds", "1",
              "--learning-starts", "60", "--attacker-hidden", "16", "16", "--ppo-steps", "60", "--rs-steps", "100",
              "--rs-updates", "10", "--rs-settings", "0.05:0.1", "--rs-hidden", "16", "16", "--pgd-steps", "2",
              "--pgd-restarts", "2", "--mad-steps", "2", "--pa-steps", "2", "--pa-restarts", "2"]


def test_eval_all_on_td3_runs_what_it_can_and_marks_the_rest_n_a(sb3_models, tmp_path, capsys):
    """TD3 has Q but no sigma: PGD (minQ) runs, MAD is n/a, RS fits its critic on deterministic rollouts without
    RS+MAD, and the learned attackers need actions only. eps without a normalizer is in raw units."""
    model = sb3_models["td3"]
    eval_all.main(["--ckpt", model["zip"], "--env-id", PENDULUM, "--eps", "0.05", "--save-dir", str(tmp_path),
                   "--attacks", "natural,uniform,mad,pgd,rs,sa_rl_sac,pa_ad_sac", *TINY_SUITE])
    row = json.loads(open(model["zip"][:-4] + "_attacks.json").read())
    assert (row["method"], row["kind"], row["eps"], row["eps_units"]) == ("sb3_td3", "sac", 0.05, "raw")
    assert row["attacks"]["mad"]["n/a"] == "n/a: TD3 has no sigma" and "mean" not in row["attacks"]["mad"]
    assert row["attacks"]["pgd"]["column"] == "PGD (minQ)" and len(row["attacks"]["pgd"]["returns"]) == 2
    assert set(row["attacks"]["rs"]["adapted"]) == {"rs_mad_ratio", "rs_explore"}
    assert row["worst"]["attack"] in {"uniform", "pgd", "rs", "sa_rl_sac", "pa_ad_sac"}
    md = open(model["zip"][:-4] + "_attacks.md").read()
    assert "n/a: TD3 has no sigma" in md and "0.05 (raw)" in md
    assert "MAD n/a" in capsys.readouterr().out


def test_eval_all_on_sb3_ppo_behind_vecnormalize_uses_the_task_radius(sb3_models, tmp_path):
    model = sb3_models["ppo_zoo_vn"]
    eval_all.main(["--ckpt", model["zip"], "--env-id", "Hopper-v4", "--vecnormalize", model["vecnormalize"],
                   "--save-dir", str(tmp_path), "--attacks", "natural,mad,pgd,rs,pa_ad_sac", *TINY_SUITE])
    row = json.loads(open(model["zip"][:-4] + "_attacks.json").read())
    assert (row["method"], row["kind"], row["eps"], row["eps_units"]) == ("sb3_ppo", "ppo", 0.075, "normalized")
    assert row["attacks"]["pgd"]["column"] == "PGD (minV)"
    assert all("mean" in a for a in row["attacks"].values())  # PPO has sigma and V: nothing is n/a
    assert row["source"]["activation"] == "ReLU"


@pytest.mark.xdist_group("ray")  # starts Ray: see tests/test_sweep.py
def test_the_ray_search_trains_attackers_of_an_sb3_victim_that_eval_all_then_reads(sb3_models, tmp_path):
    """attacks/search.py ships an SB3 zip and its VecNormalize statistics to the workers as bytes; the attackers it
    brings back are the ones eval_all's cache lookup finds for the same victim (nothing retrained)."""
    model = sb3_models["ppo_zoo_vn"]
    victim_args = ["--ckpt", model["zip"], "--env-id", "Hopper-v4", "--vecnormalize", model["vecnormalize"],
                   "--episodes", "1", "--attack-budget", "128", "--attacker-hidden", "16", "16", "--ppo-steps", "64",
                   "--save-dir", str(tmp_path / "att")]
    proc = run_script("attacks/search.py", *victim_args, "--columns", "sa_rl_ppo", "--local-cpus", "1",
                      cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| sa_rl_ppo | 2 | 128 |" in proc.stdout
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "att").iterdir()}
    assert len(stamps) == 4  # two attackers, each with its record
    proc = run_script("attacks/eval_all.py", *victim_args, "--attacks", "sa_rl_ppo", cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "att").iterdir()} == stamps


def test_single_attack_cli_on_an_external_victim(sb3_models, cleanrl_files, monkeypatch, capsys):
    model = sb3_models["td3"]
    base = ["--ckpt", model["zip"], "--env-id", PENDULUM, "--eps", "0.05", "--episodes", "1", "--env-kwargs", SHORT]
    monkeypatch.setattr(sys, "argv", ["mad.py", *base])
    with pytest.raises(SystemExit) as exit_:
        common.standalone(mad.__doc__, mad.Args, mad.evaluate, lambda args: mad.NAME)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err == f"error: mad against {model['zip']}: n/a: TD3 has no sigma"
    monkeypatch.setattr(sys, "argv", ["pgd.py", *base, "--pgd-steps", "2", "--pgd-restarts", "2"])
    common.standalone(pgd.__doc__, pgd.Args, pgd.evaluate, lambda args: pgd.NAME)
    assert capsys.readouterr().out.startswith("pgd: ")
    monkeypatch.setattr(sys, "argv", ["mad.py", "--ckpt", cleanrl_files["sac"], "--eps", "0.05", "--episodes", "1",
                                      "--env-kwargs", SHORT, "--mad-steps", "2"])
    common.standalone(mad.__doc__, mad.Args, mad.evaluate, lambda args: mad.NAME)
    assert capsys.readouterr().out.startswith("mad: ")


# --- refusals: one line, exit code 2, nothing executed -----------------------------------------------------------
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def run_eval_all(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        common.run_cli(lambda: eval_all.main(argv))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_a_malicious_pickle_in_place_of_vecnormalize_is_refused_unexecuted(sb3_models, tmp_path, capsys):
    marker = tmp_path / "executed"
    evil = tmp_path / "vecnormalize.pkl"
    with open(evil, "wb") as f:  # a payload inside a VecNormalize-shaped dict, and a bare one
        pickle.dump({"obs_rms": Payload(marker), "clip_obs": 10.0}, f)
    model = sb3_models["sac_vn"]
    err = run_eval_all(["--ckpt", model["zip"], "--env-id", PENDULUM, "--vecnormalize", str(evil)], capsys)
    assert "refusing to unpickle" in err and "system" in err
    with open(evil, "wb") as f:
        pickle.dump(Payload(marker), f)
    with pytest.raises(AttackError, match="refusing to unpickle"):
        external.read_vecnormalize(str(evil))
    assert not marker.exists()
    (tmp_path / "text.pkl").write_text("not a pickle")
    with pytest.raises(AttackError, match="is not a VecNormalize statistics file"):
        external.read_vecnormalize(str(tmp_path / "text.pkl"))


def test_bad_input_is_one_line(sb3_models, cleanrl_files, tmp_path, capsys):
    td3 = sb3_models["td3"]["zip"]
    assert "pass --env-id" in run_eval_all(["--ckpt", td3], capsys)
    assert "pass --eps in raw observation units" in run_eval_all(["--ckpt", td3, "--env-id", PENDULUM], capsys)
    assert "wrong --env-id" in run_eval_all(["--ckpt", td3, "--env-id", "Hopper-v4", "--eps", "0.1"], capsys)
    assert "TD3's policy is deterministic" in run_eval_all(["--ckpt", td3, "--env-id", PENDULUM, "--eps", "0.1",
                                                            "--stochastic", "--attacks", "natural"], capsys)
    assert "without its observation statistics" in run_eval_all(["--ckpt", cleanrl_files["bare"]], capsys)
    assert "no default attack radius" in run_eval_all(["--ckpt", sb3_models["sac_vn"]["zip"], "--env-id", PENDULUM,
                                                       "--vecnormalize", sb3_models["sac_vn"]["vecnormalize"]], capsys)
    (tmp_path / "other.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert "neither a checkpoint of this project" in run_eval_all(["--ckpt", str(tmp_path / "other.pt")], capsys)


@pytest.mark.parametrize("policy_kwargs,use_sde,message", [
    (dict(activation_fn=nn.Hardswish), False, "activation_fn <class 'torch.nn.modules.activation.Hardswish'> is not"),
    ({}, True, "gSDE"),
])
def test_an_architecture_that_cannot_be_rebuilt_is_refused(tmp_path, policy_kwargs, use_sde, message):
    quiet()
    model = sb3.PPO("MlpPolicy", make_vec_env("Hopper-v4", seed=0), policy_kwargs=policy_kwargs, use_sde=use_sde,
                    n_steps=64, device="cpu")
    model.save(tmp_path / "m.zip")
    with pytest.raises(AttackError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_victim(str(tmp_path / "m.zip"), eps=0.1, env_id="Hopper-v4")


def test_ant_observation_size_decides_its_contact_forces():
    quiet()
    assert external.matching_env("Ant-v4", None, 111, 8, "x")[0] == {"use_contact_forces": True}
    assert external.matching_env("Ant-v4", None, 27, 8, "x")[0] == {}
    with pytest.raises(AttackError, match="wrong --env-id or --env-kwargs"):
        external.matching_env("Ant-v4", None, 50, 8, "x")
