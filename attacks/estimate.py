"""What an attack suite will cost, said before it starts: the work of each attack (episodes, Sarsa critics and
updates, attacker training steps) and its time from this machine's unit costs, timed on the victim in a few
seconds: a victim step and each per-step attack's perturbation in the evaluation loop itself, a Sarsa update and
its PGD, an attacker update, a PA-AD realisation. Episodes are counted at the task's step limit (an attack that
topples the victim ends them sooner) and work found cached is counted as if it had to be done, so on tasks that
terminate the total is an upper bound; on HalfCheetah (fixed 1000 steps) it is a prediction (test: within 3x).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch

from attacks import mad, pa_ad, pgd, robust_sarsa, sa_rl, uniform, valt_soft_adv
from attacks.common import Victim, check_in_ball
from attacks.learned import preset_configs
from attacks.rl import GaussianPolicy, PPOSettings, ReplayBuffer, SACLearner

PER_STEP = {"uniform": uniform, "mad": mad, "pgd": pgd, "valt_soft_adv": valt_soft_adv}


def seconds_per_call(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # the first call allocates
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


class UnitCosts:
    """Seconds of the suite's building blocks on this machine and victim, each measured once, when first asked."""

    def __init__(self, victim: Victim, args):
        self.victim, self.cache = victim, {}
        start = time.perf_counter()
        self.env = victim.make_env()
        self.make_env = time.perf_counter() - start  # once per evaluation
        self.episode_steps = self.env.spec.max_episode_steps or 1000
        self.obs, _ = self.env.reset(seed=args.seed)
        self.step = self.steps(None, 200)

    def steps(self, attacker, n: int) -> float:
        """Seconds per step of common.rollout's loop (with `attacker` perturbing every state), over n steps."""
        v = self.victim
        start = time.perf_counter()
        for _ in range(n):
            obs_n = v.normalize(self.obs)
            if attacker is not None:
                obs_tilde = attacker(obs_n)
                check_in_ball(obs_n, obs_tilde, v.eps, "estimate")
                obs_n = obs_tilde
            self.obs, _, terminated, truncated, _ = self.env.step(v.act(obs_n.unsqueeze(0))[0].cpu().numpy())
            if terminated or truncated:
                self.obs, _ = self.env.reset()
        return (time.perf_counter() - start) / n

    def once(self, key, measure: Callable[[], float]) -> float:
        if key not in self.cache:
            self.cache[key] = measure()
        return self.cache[key]

    def perturb(self, key, attacker, episodes: int = 1) -> float:
        """Seconds an attacker adds to an episode's step. One at a time: timed in the rollout loop (interleaved with
        the simulation). A `batched` attacker perturbs the states of all running episodes in one call: a call on a
        batch of `episodes` states, shared by them."""
        def measure():
            if getattr(attacker, "batched", False) and episodes > 1:
                batch = self.victim.normalize(self.obs).expand(episodes, -1).clone()
                return seconds_per_call(lambda: attacker(batch)) / episodes
            self.steps(attacker, 1)  # the first call allocates
            return max(self.steps(attacker, 10) - self.step, 0.0)
        return self.once((key, episodes), measure)

    def sarsa(self, a) -> tuple[float, float, float]:
        """(one Sarsa update, one RS perturbation, one RS+MAD perturbation), on a critic of the suite's size; `a`:
        Robust Sarsa's arguments."""
        def measure():
            v = self.victim
            n = 256
            dims = {"obs": v.obs_dim, "next_obs": v.obs_dim}
            dims.update({k: v.act_dim for k in ("actions", "next_actions", "raw_actions", "raw_next_actions")})
            data = {k: torch.zeros(n, d, device=v.device) for k, d in dims.items()}
            data.update(rewards=torch.zeros(n, device=v.device), terminated=torch.zeros(n, device=v.device))
            def fit(updates: int):
                return robust_sarsa.fit_sarsa(data, v.obs_dim, v.act_dim, updates, 0.05, 1.0, 0, tuple(a.rs_hidden),
                                              device=v.device)
            fit(2)  # the first fit pays one-off costs
            start = time.perf_counter()
            q = fit(12)
            update = (time.perf_counter() - start) / 12  # most of these carry the regulariser: an upper figure
            kw = dict(steps=a.pgd_steps, step_scale=a.pgd_step_scale, restarts=a.pgd_restarts, start=a.pgd_start)
            rs = self.perturb("rs", pgd.PGDAttacker(v, critic=q, **kw), a.episodes)
            rs_mad = self.perturb("rs_mad", robust_sarsa.SarsaMADAttacker(v, q, a.rs_mad_ratio, **kw), a.episodes) \
                if a.rs_mad_ratio > 0 else 0.0  # (0: a victim without sigma)
            return update, rs, rs_mad
        return self.once("sarsa", measure)

    def attacker_update(self, algo: str, obs_dim: int, act_dim: int, hidden: tuple,
                        ppo: Optional[PPOSettings] = None) -> float:
        """Seconds of training updates per environment step of a learned attacker (`ppo`: a PPO attacker's)."""
        cfg = ppo or PPOSettings()

        def measure():
            if algo == "sac":
                learner = SACLearner(obs_dim, act_dim, hidden, self.victim.device)
                buffer = ReplayBuffer(256, obs_dim, act_dim, self.victim.device, 0)
                for _ in range(256):
                    buffer.add(np.zeros(obs_dim), np.zeros(act_dim), 0.0, np.zeros(obs_dim), False)
                return seconds_per_call(lambda: learner.update(*buffer.sample(256)))  # one update per step
            policy = GaussianPolicy(obs_dim, act_dim, hidden)
            opt = torch.optim.Adam(policy.parameters())
            obs, u = torch.zeros(max(cfg.n_steps // cfg.minibatches, 1), obs_dim), torch.zeros(1, act_dim)

            def minibatch():
                loss = policy.dist(obs).log_prob(u).sum() + policy.value(obs).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            return seconds_per_call(minibatch) * cfg.epochs * cfg.minibatches / cfg.n_steps
        # keyed on what the measurement depends on, not on the knobs a search varies
        return self.once((algo, obs_dim, act_dim, tuple(hidden), cfg.n_steps, cfg.epochs, cfg.minibatches), measure)


def plan(name: str, victim: Victim, args, costs: UnitCosts) -> tuple[float, str]:
    """(seconds, the work in words) of one attack of the suite."""
    v, a, c = victim, args, costs
    episodes = a.episodes * c.episode_steps
    if name == "natural":
        return c.make_env + episodes * c.step, f"{a.episodes} episodes"
    if name in PER_STEP:
        return (c.make_env + episodes * (c.step + c.perturb(name, PER_STEP[name].attacker(v, a), a.episodes)),
                f"{a.episodes} attacked episodes")
    if name == "rs":
        critics = len(robust_sarsa.parse_settings(a)) * len(robust_sarsa.action_inputs(v, a))
        update, rs, rs_mad = c.sarsa(a)
        per_critic = a.rs_updates * update + episodes * (c.step + rs) + (episodes * (c.step + rs_mad)
                                                                          if a.rs_mad_ratio > 0 else 0)
        return (a.rs_steps * c.step + critics * per_critic,
                f"{critics} Sarsa critics ({'explicit' if a.rs_settings else a.rs_grid} grid), {a.rs_updates} updates "
                f"and {a.episodes * (2 if a.rs_mad_ratio > 0 else 1)} attacked episodes each")
    kind = name.rsplit("_", 1)[0]  # sa_rl | pa_ad
    configs = preset_configs(kind, a.algo, a.search, v.env_id, a.attack_budget, a.seeds, a.attacker_hidden,
                             a.ppo_steps, a.learning_starts, a.seed)
    if not configs or any(cfg.budget <= 0 for cfg in configs):
        return 0.0, "no attacker to train (the attack itself says why)"
    if kind == "pa_ad":
        act_dim, realize = v.act_dim, pa_ad.realizer(v, a.pa_steps, a.pa_restarts, step_scale=a.pa_step_scale,
                                                    final_step_scale=a.pa_final_step_scale)
    else:
        act_dim, realize = v.obs_dim, sa_rl.realizer(v)
    action = torch.full((act_dim,), 0.5, device=v.device)  # an adversary's action in [-1, 1]
    per_step = c.step + c.perturb(("realize", name), lambda s: realize(s, action))  # the adversary's step, about
    total = 0.0
    for cfg in configs:
        updates = cfg.budget - (cfg.learning_starts if cfg.algo == "sac" else 0)
        update = c.attacker_update(cfg.algo, v.obs_dim, act_dim, cfg.hidden, cfg.ppo)
        total += cfg.budget * per_step + updates * update + episodes * per_step
    return total, f"{len(configs)} {a.algo.upper()} attackers ({a.search} search) of {configs[0].budget} steps"


def announce(attacks: list[tuple[str, object]], victim: Victim) -> float:
    """Prints each attack's work and estimated time, and the total; returns the total in seconds. `attacks`: (name,
    the attack's arguments) in the order they will run."""
    if not attacks:
        return 0.0
    costs = UnitCosts(victim, attacks[0][1])
    lines, total = [], 0.0
    for name, args in attacks:
        seconds, work = plan(name, victim, args, costs)
        total += seconds
        lines.append(f"    {name:<14} {duration(seconds):>8}  {work}")
    costs.env.close()
    print(f"[{victim.method} {victim.env_id}] estimated at most {duration(total)} on this machine "
          f"(episodes counted at {costs.episode_steps} steps; cached critics and attackers take less):", flush=True)
    print("\n".join(lines), flush=True)
    if total > 3600:
        print("    (fewer: --attacks a,b,... the columns wanted; --rs-grid quick 4 Sarsa critics instead of the "
              "reference's 30)", flush=True)
    return total


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
