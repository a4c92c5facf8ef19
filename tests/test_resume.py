"""Every method script: save -> resume continues the step count and the learning state exactly."""
from __future__ import annotations

import importlib

import pytest
import torch

from conftest import assert_continued, assert_same_end
from test_sac import TINY_ARGS

EXTRA = {"sac": {}, "sac_valt_eps": {"worst_rate_remain_steps": 300, "reg_eps_start_step": 200, "reg_eps_end_step": 400},
         "sac_valt_soft": {"adv_reset_every": 250, "reg_eps_start_step": 200, "reg_eps_end_step": 400},
         "robust_sac": {"reg_eps_start_step": 200, "reg_eps_end_step": 400, "reg_sgld_steps": 2},
         "sac_ppo": {"adv_iterations": 4, "adv_ppo_steps": 64, "adv_minibatch": 32, "reg_eps_start_step": 200,
                     "reg_eps_end_step": 400}}


@pytest.mark.parametrize("module_name", list(EXTRA))
def test_resume_continues_exactly(workdir, module_name, capsys):
    mod = importlib.import_module(module_name)
    common = dict(env_id="Hopper-v4", total_timesteps=500, seed=3, **TINY_ARGS, **EXTRA[module_name])
    straight = mod.train(mod.Args(**common, run_name="straight", save_every=0))
    mod.train(mod.Args(**common, run_name="part", save_every=300, keep_checkpoints=True, save_buffer=True))
    resumed = mod.train(mod.Args(**common, run_name="resumed", save_every=0, resume="runs/part/model_step300.pt"))
    assert resumed["global_step"] == 500
    assert_continued(capsys.readouterr().out, "runs/part/model_step300.pt", 300)
    nets = straight["learner"].state_dict().keys()
    kept = ("adversary", "adversary_trained") if "adversary_trained" in nets else ("adversary",) if "adversary" in nets else ()
    if "adversary_trained" in nets:  # reset at 250 and 500: the resumed run's own reset at 500 remakes it, so check
        saved = torch.load("runs/part/model_step300.pt", weights_only=True)  # the restore itself too
        assert saved["adversary_trained"] is not None
        restored = mod.train(mod.Args(**{**common, "total_timesteps": 300}, run_name="restored", save_every=0,
                                      resume="runs/part/model_step300.pt"))["learner"].adversary_trained
        assert all(torch.equal(restored[k], v) for k, v in saved["adversary_trained"].items())
    assert_same_end(straight, resumed, ("actor", "critic", "critic_target") + kept)


def test_resume_rejects_a_checkpoint_of_another_method(workdir):
    import sac
    import sac_valt_eps

    out = sac.train(sac.Args(env_id="Hopper-v4", total_timesteps=250, run_name="s", save_every=0, **TINY_ARGS))
    with pytest.raises(sac_valt_eps.UserError, match="checkpoint is sac"):
        sac_valt_eps.train(sac_valt_eps.Args(env_id="Hopper-v4", total_timesteps=300, resume=out["save_path"], **TINY_ARGS))


def test_resume_with_other_network_sizes_is_one_clear_error(workdir):
    from conftest import TINY, run_script

    first = run_script("sac.py", "--env-id", "Hopper-v4", "--total-timesteps", "250", "--run-name", "a", *TINY,
                       cwd=str(workdir))
    assert first.returncode == 0, first.stderr[-2000:]
    proc = run_script("sac.py", "--env-id", "Hopper-v4", "--total-timesteps", "300", "--run-name", "b",
                      "--hidden-sizes", "16", "16", "--buffer-size", "5000", "--threads", "1",
                      "--resume", "runs/a/model.pt", cwd=str(workdir))
    assert proc.returncode == 2 and "does not fit" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("module_name", list(EXTRA))
def test_a_run_continues_from_the_studies_bfloat16_resume_copy(workdir, module_name):
    """sweep.write_resume_copy's file (networks in bfloat16, no optimizer state, the target critic saved as the
    critic, no buffer) resumes every SAC-family script: the target starts at the critic, parameters and the fresh
    optimizer state are float32, training goes on past a VALT-SOFT adversary reset."""
    import sweep

    mod = importlib.import_module(module_name)
    common = dict(env_id="Hopper-v4", seed=3, **TINY_ARGS, **EXTRA[module_name])
    part = mod.train(mod.Args(**common, total_timesteps=300, run_name="part", save_every=0))
    sweep.write_resume_copy(part["save_path"], "resume.pt")
    copy = torch.load("resume.pt", weights_only=True)
    assert copy["critic"]["weights.1"].dtype == torch.bfloat16 and copy["train_state"]["torch_rng"].dtype == torch.uint8
    assert all(copy[name] is None or copy[name]["state"] == {} for name in part["learner"].OPTIMIZERS)
    at_once = mod.train(mod.Args(**common, total_timesteps=300, run_name="loaded", save_every=0, resume="resume.pt"))
    critic, target = at_once["learner"].critic.state_dict(), at_once["learner"].critic_target.state_dict()
    assert not torch.equal(part["learner"].critic_target.state_dict()["weights.1"], critic["weights.1"])
    for name, p in critic.items():
        assert torch.equal(target[name], p) and torch.equal(p, copy["critic"][name].float()), name
    if copy.get("adversary_trained") is not None:  # VALT-SOFT's kept adversary: rounded in the copy, float32 again
        assert copy["adversary_trained"]["trunk.2.weight"].dtype == torch.bfloat16
        assert {v.dtype for v in at_once["learner"].adversary_trained.values()} == {torch.float32}
    out = mod.train(mod.Args(**common, total_timesteps=500, run_name="resumed", save_every=0, resume="resume.pt"))
    learner = out["learner"]
    for name in learner.NETS:
        assert {p.dtype for p in getattr(learner, name).state_dict().values() if p.is_floating_point()} == {torch.float32}
    for name in learner.OPTIMIZERS:
        optimizer = getattr(learner, name)
        for state in (optimizer.state.values() if optimizer is not None else ()):
            assert {v.dtype for v in state.values() if torch.is_tensor(v)} <= {torch.float32}
    assert out["global_step"] == 500 and torch.load(out["save_path"], weights_only=True)["global_step"] == 500
