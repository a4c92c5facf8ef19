"""Golden runs of the attackers' own trainers: a seeded tiny SAC attacker (SA-RL), PPO attacker (PA-AD, its PGD
realisation included) and Robust Sarsa critic against the committed fixtures, recorded as every scalar they
backpropagate (tests/golden.py's recording) and a digest of the trained network.

    python tests/attack_golden.py            # rewrite tests/data/attack_golden.json from the current attacks/
    python tests/attack_golden.py --check    # compare with the file (or --check sa_rl_sac: one run)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

from attacks import pa_ad, rl, robust_sarsa, sa_rl  # noqa: E402
from attacks.common import load_victim  # noqa: E402
from golden import digest, record_or_check, recording  # noqa: E402  (tests/golden.py)

PATH = os.path.join(ROOT, "tests", "data", "attack_golden.json")
SAC_FIXTURE = os.path.join(ROOT, "tests", "data", "sac_halfcheetah_30k.pt")
PPO_FIXTURE = os.path.join(ROOT, "tests", "data", "ppo_hopper_160k.pt")


def sa_rl_sac():
    victim = load_victim(SAC_FIXTURE)
    env = rl.AttackEnv(victim, victim.obs_dim, sa_rl.realizer(victim), "sa_rl_sac")
    return rl.train_sac(env, 500, 3, (32, 32), learning_starts=200, batch_size=32)  # 300 updates


def pa_ad_ppo():
    victim = load_victim(PPO_FIXTURE)
    # the realisation pinned (2 steps of eps/2, 2 restarts): the golden checks the trainer, not the attack's defaults
    realize = pa_ad.realizer(victim, 2, 2, start="mixed", step_scale=1.0, final_step_scale=1.0)
    env = rl.AttackEnv(victim, victim.act_dim, realize, "pa_ad_ppo")
    return rl.train_ppo(env, 1024, 3, (16, 16), rl.PPOSettings(n_steps=128, epochs=2, minibatches=4))


def rs_ppo():
    victim = load_victim(PPO_FIXTURE)
    data = robust_sarsa.collect_transitions(victim, 300, 3)
    return robust_sarsa.fit_sarsa(data, victim.obs_dim, victim.act_dim, 300, 0.05, 1.0, 3, (16, 16), batch_size=32,
                                  raw_actions=True)


RUNS = {"sa_rl_sac": sa_rl_sac, "pa_ad_ppo": pa_ad_ppo, "rs_ppo": rs_ppo}


def run(name: str) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    losses: list = []
    try:
        with recording(losses), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            net = RUNS[name]()
    finally:
        torch.set_num_threads(threads)
    return {"losses": losses, "network_sha256": digest(net.state_dict())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", nargs="*", default=None, help="compare these runs (none named: all) with the file")
    record_or_check(PATH, RUNS, run, p.parse_args().check, lambda now, old: now == old,
                    lambda r: f"network {r['network_sha256'][:12]}")


if __name__ == "__main__":
    main()
