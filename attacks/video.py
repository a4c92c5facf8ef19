"""A victim's natural episode and the same episode under an attack (same environment seed), side by side in one
mp4, rendered off-screen (EGL on a headless machine, as the method scripts' --capture-video).
`python attacks/eval_all.py --ckpt X --video` writes one for the worst attack of X's row."""
from __future__ import annotations

import copy
import os
import gymnasium as gym
import numpy as np

from attacks.common import AttackError, Victim
from attacks.contract import make_env

FRAME = {"width": 320, "height": 240}


class FrameRecorder(gym.Wrapper):
    """Keeps every rendered frame of the episodes it runs (the reset frame included)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.frames: list[np.ndarray] = []

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.frames.append(self.env.render())
        return out

    def step(self, action):
        out = self.env.step(action)
        self.frames.append(self.env.render())
        return out


def follow_the_body(env: gym.Env) -> None:
    """Render from the model's "track" camera (it follows the body) where it has one: the free default camera stays
    put while the agent runs out of the frame."""
    import mujoco

    camera = mujoco.mj_name2id(env.unwrapped.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    if camera >= 0:
        env.unwrapped.mujoco_renderer.camera_id = camera


def rendering_env(victim: Victim) -> gym.Env:
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        env = make_env(victim.env_id, {**victim.env_kwargs, "render_mode": "rgb_array", **FRAME})
        follow_the_body(env)
        env.reset(seed=0)
        env.render()
    except AttackError:
        raise
    except Exception as e:  # no GL backend: mujoco and PyOpenGL raise their own error types
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise AttackError(f"--video: cannot render {victim.env_id} off-screen ({first}); install EGL (libegl1) or "
                          "OSMesa (libosmesa6) and set MUJOCO_GL=egl or osmesa")
    return FrameRecorder(env)


def record(victim: Victim, module, args) -> tuple[list[np.ndarray], float, int]:
    """Frames, return and frame rate of the first evaluation episode of `module.evaluate` (the episode its table
    column starts with: same seed, same attacker), run with a rendering environment. Episodes run side by side
    (common.rollout_side_by_side) share their random draws, so the column is evaluated again whole, its first
    environment recording; an attack that runs episodes one at a time needs only the first."""
    recorder = rendering_env(victim)
    one = copy.copy(args)
    if not getattr(module, "SIDE_BY_SIDE", False):
        one.episodes = 1
    made = []
    make_env = victim.make_env

    def first_records():  # the attack's own rollout creates its environments in episode order
        made.append(recorder if not made else make_env())
        return made[-1]
    victim.make_env = first_records  # an instance attribute, removed below
    try:
        stats = module.evaluate(victim, one)["stats"]
    finally:
        del victim.make_env
        recorder.env.close()
    return recorder.frames, stats.returns[0], recorder.metadata.get("render_fps", 30)


def labelled(frames: list[np.ndarray], text: str) -> list[np.ndarray]:
    from PIL import Image, ImageDraw

    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        ImageDraw.Draw(image).text((8, 6), text, fill=(255, 255, 255))
        out.append(np.asarray(image))
    return out


def side_by_side(left: list[np.ndarray], right: list[np.ndarray]) -> list[np.ndarray]:
    """One frame per step of the longer episode; the shorter one holds its last frame (it ended: fell or stopped)."""
    n = max(len(left), len(right))
    pad = lambda frames: frames + [frames[-1]] * (n - len(frames))  # noqa: E731
    return [np.concatenate([a, b], axis=1) for a, b in zip(pad(left), pad(right))]


def natural_vs_attack(victim: Victim, natural_module, attack_module, attack_label: str, args, path: str) -> dict:
    """Writes the side-by-side mp4 and returns what it shows."""
    import imageio.v2 as imageio  # with imageio-ffmpeg's bundled ffmpeg

    clean, clean_return, fps = record(victim, natural_module, args)
    attacked, attacked_return, _ = record(victim, attack_module, args)
    frames = side_by_side(labelled(clean, f"natural  {clean_return:.0f}"),
                          labelled(attacked, f"{attack_label}  {attacked_return:.0f}"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps, macro_block_size=8)
    return {"path": path, "natural_return": clean_return, "attacked_return": attacked_return,
            "frames": len(frames), "episode_seed": args.seed}
