"""The fast paths (fused Adam, --compile) compute the same updates as the plain path: a few updates from the
same initialisation, batches and random draws agree within float rounding (issue #6's rule: speed never
changes the math)."""
from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch

# On a GPU machine the CUDA path is checked too (compiled Triton kernels, fused CUDA Adam); CI has the CPU alone.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
OBS_DIM, ACT_DIM, BATCH = 6, 3, 64

# Every part of each update active: VALT-EPS halfway up its k_w ramp (both mixture components), the SA
# regulariser at full radius, VALT-SOFT's adversary trained in the step.
CASES = {
    "sac": dict(),
    "sac_valt_eps": dict(attack_eps=0.2, worst_rate_remain_steps=200, reg_coef=1.0, reg_eps_start_step=0,
                         reg_eps_end_step=1),
    "sac_valt_soft": dict(attack_eps=0.2, reg_coef=1.0, reg_eps_start_step=0, reg_eps_end_step=1,
                          adv_reset_every=0, kappa=3.0),
}


def plain_optimizers(learner) -> None:
    """Swap every fused Adam of the learner for torch's reference per-parameter loop (same hyper-parameters)."""
    for name, opt in list(vars(learner).items()):
        if isinstance(opt, torch.optim.Adam):
            group = {k: v for k, v in opt.param_groups[0].items() if k not in ("params", "fused", "foreach")}
            setattr(learner, name, torch.optim.Adam(opt.param_groups[0]["params"], **group, fused=False, foreach=False))


def run_updates(learner, batches, seed: int) -> list[dict]:
    torch.manual_seed(seed)  # the same draws (noise, uniform perturbations, PGD starts) on both paths
    return [{k: v.detach().clone() for k, v in learner.update(*batch, 100).items()} for batch in batches]


@pytest.mark.parametrize("module_name", sorted(CASES))
@pytest.mark.parametrize("fast", ["fused", "compile"])
@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_matches_plain_path(module_name, fast, device):
    device = torch.device(device)
    torch._dynamo.reset()  # a fresh compile cache per case: never a silent eager fallback at the recompile limit
    module = importlib.import_module(module_name)
    args = module.Args(hidden_sizes=(32, 32), **CASES[module_name])
    torch.manual_seed(0)
    plain = module.Learner(args, OBS_DIM, ACT_DIM, -np.ones(ACT_DIM), np.ones(ACT_DIM), device)
    fast_args = copy.deepcopy(args)
    fast_args.compile = fast == "compile"
    torch.manual_seed(0)
    quick = module.Learner(fast_args, OBS_DIM, ACT_DIM, -np.ones(ACT_DIM), np.ones(ACT_DIM), device)
    plain_optimizers(plain)
    for net in ("actor", "critic", "critic_target"):  # the fast learner really runs compiled modules
        assert (getattr(quick, net)._compiled_call_impl is not None) == (fast == "compile")
    assert all(torch.equal(p, q) for p, q in zip(plain.actor.parameters(), quick.actor.parameters()))

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(BATCH, OBS_DIM, generator=g), torch.rand(BATCH, ACT_DIM, generator=g) * 2 - 1,
                torch.randn(BATCH, generator=g), torch.randn(BATCH, OBS_DIM, generator=g),
                (torch.rand(BATCH, generator=g) < 0.1).float(), torch.rand(BATCH, generator=g)) for _ in range(3)]
    batches = [tuple(t.to(device) for t in batch) for batch in batches]
    logs_plain, logs_fast = run_updates(plain, batches, 7), run_updates(quick, batches, 7)
    for a, b in zip(logs_plain, logs_fast):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4, msg=key)
    for net in ("actor", "critic", "critic_target"):
        for (name, p), q in zip(getattr(plain, net).named_parameters(), getattr(quick, net).parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=f"{net}.{name}")
    # and the updates did move the networks (a comparison of two idle learners would prove nothing)
    torch.manual_seed(0)
    fresh = module.Learner(args, OBS_DIM, ACT_DIM, -np.ones(ACT_DIM), np.ones(ACT_DIM), device)
    assert not torch.allclose(next(fresh.critic.parameters()), next(quick.critic.parameters()), atol=1e-4)
