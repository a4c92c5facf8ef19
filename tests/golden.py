"""Golden runs: every method script's seeded tiny run, recorded as the sequence of every scalar loss it
backpropagates (through `Tensor.backward` or `torch.autograd.grad`) and a digest of its final networks.

The record does not depend on how a script is organised (only on what it computes, in order), so a refactor that
changes nothing must reproduce it bit for bit on CPU (tests/test_golden.py).

    python tests/golden.py                 # rewrite tests/data/golden_losses.json from the current scripts
    python tests/golden.py --check sac     # compare one script against the file
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import sys
import tempfile
from typing import Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
PATH = os.path.join(ROOT, "tests", "data", "golden_losses.json")

_SAC = dict(env_id="Hopper-v4", total_timesteps=500, seed=3, learning_starts=200, batch_size=32, hidden_sizes=(32, 32),
            buffer_size=5000, eval_every=0, eval_episodes=1, log_every=100, threads=1, save_every=0)
_PPO = dict(env_id="Hopper-v4", total_timesteps=2560, seed=3, num_steps=128, num_minibatches=4, update_epochs=2,
            value_epochs=2, hidden_sizes=(16, 16), eval_every=0, eval_episodes=1, log_every=128, threads=1,
            save_every=0)
# Each run makes at least 300 gradient updates of its agent (SAC family: one per step after learning_starts;
# PPO family: minibatch steps of the policy and of the value function), with every method component active.
RUNS = {
    "sac": dict(_SAC),
    "robust_sac": dict(_SAC, reg_eps_start_step=200, reg_eps_end_step=400, reg_sgld_steps=2),
    "sac_valt_eps": dict(_SAC, worst_rate_remain_steps=300, reg_eps_start_step=200, reg_eps_end_step=400),
    "sac_valt_soft": dict(_SAC, adv_reset_every=250, reg_eps_start_step=200, reg_eps_end_step=400),
    "sac_ppo": dict(_SAC, adv_iterations=4, adv_ppo_steps=64, adv_minibatch=32, reg_eps_start_step=200,
                    reg_eps_end_step=400),
    "ppo": dict(_PPO),
    "robust_ppo": dict(_PPO),
    "atla_ppo": dict(_PPO),
    "wocar_ppo": dict(_PPO, q_epochs=2, worst_action_steps=5),
}


@contextlib.contextmanager
def recording(losses: list):
    """Appends float(loss) of every scalar backpropagated while active, in order."""
    backward, grad = torch.Tensor.backward, torch.autograd.grad

    def tensor_backward(self, *args, **kwargs):
        if self.numel() == 1:
            losses.append(float(self.detach()))
        return backward(self, *args, **kwargs)

    def autograd_grad(outputs, *args, **kwargs):
        for out in (outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            losses.append(float(out.detach().sum()))
        return grad(outputs, *args, **kwargs)

    torch.Tensor.backward, torch.autograd.grad = tensor_backward, autograd_grad
    try:
        yield
    finally:
        torch.Tensor.backward, torch.autograd.grad = backward, grad


def digest(state: dict) -> str:
    """sha256 over every tensor of a nested state dict (keys sorted), bytes exact."""
    h = hashlib.sha256()

    def walk(value, key=""):
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(value[k], f"{key}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        elif torch.is_tensor(value):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    walk(state)
    return h.hexdigest()


def run(name: str) -> dict:
    """The golden record of one script's tiny run (in a temporary working folder)."""
    mod = importlib.import_module(name)
    losses: list = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            with recording(losses), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                out = mod.train(mod.Args(**RUNS[name], run_name="golden"))
        finally:
            os.chdir(cwd)
    nets = {k: v for k, v in out["learner"].state_dict().items() if not k.endswith("optimizer")}
    return {"args": {k: list(v) if isinstance(v, tuple) else v for k, v in RUNS[name].items()},
            "losses": losses, "networks_sha256": digest(nets), "eval_returns": [float(r) for r in out["eval_returns"]]}


def record_or_check(path: str, runs: dict, run, check: Optional[list], same, describe) -> None:
    """A golden file's command line: with `check` None, every run recorded into `path`; else the named runs (none
    named: all) run again and compared with it by `same(now, recorded)`."""
    if check is not None:
        recorded = json.load(open(path))
        for name in check or list(runs):
            now = run(name)
            print(f"{name}: {'identical' if same(now, recorded[name]) else 'DIFFERS'} ({len(now['losses'])} losses)")
        return
    record = {name: run(name) for name in runs}
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, **record}, f)
    for name, r in record.items():
        print(f"{name}: {len(r['losses'])} losses, {describe(r)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", nargs="*", default=None, help="compare these scripts (none named: all) with the file")
    a = p.parse_args()
    torch.set_num_threads(1)
    record_or_check(PATH, RUNS, run, a.check,
                    lambda now, old: now["losses"] == old["losses"] and now["networks_sha256"] == old["networks_sha256"],
                    lambda r: f"networks {r['networks_sha256'][:12]}")


if __name__ == "__main__":
    main()
