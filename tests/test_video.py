"""Videos: --capture-video in the method scripts writes each evaluation's first episode as an mp4 rendered
off-screen (EGL on a headless machine); without a renderer it is one clear line."""
from __future__ import annotations

import os

import imageio.v3 as iio
import pytest

from attacks.common import load_victim
from conftest import TINY, run_script
from test_ppo import TINY_PPO_CLI


def first_eval_episode_length(ckpt_path: str, seed: int) -> int:
    """Steps of the deterministic episode the final evaluation starts with (seed + 10000), replayed independently
    through the checkpoint contract."""
    victim = load_victim(ckpt_path)
    env, steps, done = victim.make_env(), 0, False
    obs, _ = env.reset(seed=seed + 10_000)
    while not done:
        obs, _, terminated, truncated, _ = env.step(victim.act(victim.normalize(obs).unsqueeze(0))[0].numpy())
        steps, done = steps + 1, terminated or truncated
    return steps


@pytest.mark.parametrize("script, extra", [("sac.py", TINY), ("ppo.py", TINY_PPO_CLI)])
def test_capture_video_writes_the_first_episode_of_each_evaluation(workdir, script, extra):
    steps = 400 if script == "sac.py" else 256
    proc = run_script(script, "--env-id", "Hopper-v4", *extra, "--total-timesteps", str(steps), "--eval-every",
                      str(steps // 2), "--capture-video", "--run-name", "v", cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = workdir / "videos" / "v"
    assert sorted(os.listdir(folder)) == sorted([f"eval_step{steps // 2}.mp4", f"eval_step{steps}.mp4"])
    frames = iio.imread(folder / f"eval_step{steps}.mp4")
    expected = first_eval_episode_length(str(workdir / "runs" / "v" / "model.pt"), seed=1) + 1  # + the reset frame
    assert frames.shape == (expected, 240, 320, 3)
    assert frames.std() > 1.0  # a rendered scene, not a blank frame


def test_capture_video_without_a_renderer_is_one_line(workdir):
    env = {"MUJOCO_GL": "glfw", "DISPLAY": ""}  # an on-screen backend and no display: nothing can render
    proc = run_script("sac.py", "--env-id", "Hopper-v4", *TINY, "--total-timesteps", "300", "--capture-video",
                      cwd=str(workdir), env=env)
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]  # GLFW prints its own warnings too
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    assert "--capture-video: cannot render Hopper-v4 off-screen" in errors[0]


def test_attack_video_shows_the_tables_first_episode_natural_and_attacked(workdir):
    tmp_path = workdir
    """attacks/video.py: the natural and the PGD episode of seed 0 side by side; their returns are those the attack
    modules report for that episode without rendering, and the video has a frame per step of the longer one."""
    import dataclasses

    import sac
    from attacks import natural, pgd, video
    from attacks.common import EvalArgs
    from test_sac import TINY_ARGS

    out = sac.train(sac.Args(env_id="Hopper-v4", total_timesteps=400, seed=0, save_every=0, run_name="victim",
                             save_path=str(tmp_path / "model.pt"), **TINY_ARGS))
    victim = load_victim(out["save_path"])
    # 3 episodes side by side share their random draws: the video's episode is the first of the whole column
    args = dataclasses.make_dataclass("A", [], bases=(pgd.Args, EvalArgs), kw_only=True)(episodes=3, seed=0)
    shown = video.natural_vs_attack(victim, natural, pgd, "PGD (minQ)", args, str(tmp_path / "v.mp4"))
    clean = natural.evaluate(victim, args)["stats"]
    attacked = pgd.evaluate(victim, args)["stats"]
    assert shown["natural_return"] == clean.returns[0] and shown["attacked_return"] == attacked.returns[0]
    frames = iio.imread(tmp_path / "v.mp4")
    assert frames.shape == (max(clean.lengths[0], attacked.lengths[0]) + 1, 240, 640, 3)
    assert shown["frames"] == len(frames)
    assert frames[:, :, :320].std() > 1.0 and frames[:, :, 320:].std() > 1.0
    # eval_all --video: the same pair for the row's worst attack, named in its JSON
    import json

    from attacks import eval_all

    eval_all.main(["--ckpt", out["save_path"], "--attacks", "natural,pgd", "--episodes", "1", "--seed", "0", "--video"])
    row = json.loads((tmp_path / "model_attacks.json").read_text())
    assert row["video"]["path"] == f"model_natural_vs_{row['worst']['attack']}.mp4"  # beside the row, relative to it
    assert iio.imread(tmp_path / row["video"]["path"]).shape[0] == row["video"]["frames"]
    # Robust Sarsa's column is the strongest of a grid of critics: its video replays that critic's attack
    from attacks import robust_sarsa

    rs_args = eval_all.parse(eval_all.Args, "", ["--ckpt", "x", "--episodes", "2", "--rs-settings", "0.05:0.1", "0:0",
                                                 "--rs-steps", "200", "--rs-updates", "20", "--rs-hidden", "16", "16",
                                                 "--save-dir", str(tmp_path / "rs")])
    column = robust_sarsa.evaluate(victim, rs_args)
    _, replayed, _ = video.record(victim, robust_sarsa.Replay(victim, rs_args, column["strongest"]), rs_args)
    assert replayed == column["stats"].returns[0]


def test_the_video_of_a_learned_column_replays_its_strongest_attacker_and_leaves_the_cache_alone(workdir):
    """A row whose worst column is a learned attacker: the video's attacked episode is the column's first, played by
    the attacker the search kept (--load), and the search's records still describe the table's evaluation."""
    import glob
    import json

    import sac
    from attacks import eval_all
    from test_sac import TINY_ARGS

    out = sac.train(sac.Args(env_id="Hopper-v4", total_timesteps=400, seed=0, save_every=0, run_name="victim",
                             save_path=str(workdir / "model.pt"), **TINY_ARGS))
    eval_all.main(["--ckpt", out["save_path"], "--attacks", "sa_rl_ppo", "--episodes", "2", "--attack-budget", "128",
                   "--ppo-steps", "64", "--attacker-hidden", "16", "16", "--save-dir", str(workdir / "att"), "--video"])
    row = json.loads((workdir / "model_attacks.json").read_text())
    column = row["attacks"]["sa_rl_ppo"]
    assert row["video"]["attacked_return"] == column["returns"][0]
    assert column["attacker_path"].startswith(os.path.join("att", ""))  # the save dir, relative to the row's folder
    records = [json.load(open(p)) for p in glob.glob(str(workdir / "att" / "*.json"))]
    assert len(records) == 2 and all(r["evaluation"]["episodes"] == 2 for r in records)
