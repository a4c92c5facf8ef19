"""results.py on a hand-made sweep folder: the table's cells come from the attack JSONs, the interval from the
per-seed worsts, and a sweep run with --train-args (an ablation) names them in a last column."""
from __future__ import annotations

import json

import pytest

import results


def make_sweep(root, train_args: str, method: str = "sac_valt_eps", env_id: str = "HalfCheetah-v4") -> None:
    for seed, (clean, worst) in enumerate([(3000.0, 1000.0), (3500.0, 1500.0), (4000.0, 2300.0)], start=1):
        name = f"{method}__{env_id}__s{seed}"
        (root / "trials" / name).mkdir(parents=True)
        (root / "trials" / name / "done.json").write_text(json.dumps(
            {"method": method, "env_id": env_id, "seed": seed, "global_step": 50000,
             "eval_mean": clean}))
        (root / "models").mkdir(exist_ok=True)
        attacks = {"natural": {"mean": clean, "std": 1.0}, "pgd": {"mean": worst, "std": 2.0}}
        (root / "models" / f"{name}_attacks.json").write_text(json.dumps({"attacks": attacks}))
    (root / "attacks").mkdir()
    row = {"ckpt": f"x/attacks/{method}__{env_id}__s2.pt", "env_id": env_id, "global_step": 50000,
           "attacks": {"natural": {"mean": 3500.0, "std": 10.0}, "pgd": {"mean": 1500.0, "std": 20.0},
                       "rs": {"mean": 1200.0, "std": 30.0}},
           "worst": {"attack": "rs", "mean": 1200.0, "std": 30.0}}
    (root / "attacks" / f"{method}__{env_id}.json").write_text(json.dumps(row))
    # eval_all's row next to an earlier median seed's attacked copy: not the suite's row
    stale = dict(row, attacks={"natural": {"mean": 1.0, "std": 0.0}}, worst=None)
    (root / "attacks" / f"{method}__{env_id}__s1_attacks.json").write_text(json.dumps(stale))
    (root / "sweep.json").write_text(json.dumps({"train_args": train_args}))


@pytest.mark.parametrize("train_args", ["", '{"pe_adversary": false}'])
def test_table_cells_interval_and_variant_label(tmp_path, train_args):
    make_sweep(tmp_path, train_args)
    results.main(["--sweep", str(tmp_path), "--no-figures"])
    line = (tmp_path / "results" / "table.md").read_text().splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:5] == ["2", "50000"] and cells[5:8] == ["3500 ± 10", "1500 ± 20", "1200 ± 30"]
    assert cells[8] == "1200 ± 30"
    # per-seed worsts 1000, 1500, 2300: mean 1600, sd 655.7, t(2) 4.303 -> half-width 1629
    assert cells[9] == "1600 ± 1629 (n=3)"
    assert cells[1] == "VALT-EPS-SAC" and cells[10] == "4647 ± 180"
    assert cells[11:] == (["pe_adversary=False"] if train_args else [])  # the variant is named, never hidden


@pytest.mark.parametrize("train_args, label, paper, rest", [
    ("", "ATLA-PPO", "1806 ± 665", []),
    ('{"pa": true}', "PA-ATLA-PPO", "1020 ± 134", []),  # a variant that is the paper's own row: no variant column
    ('{"pa": true, "reg_coef": 0.0}', "PA-ATLA-PPO", "1020 ± 134", ["reg_coef=0.0"])])
def test_pa_atla_is_labelled_and_compared_as_its_own_paper_row(tmp_path, train_args, label, paper, rest):
    make_sweep(tmp_path, train_args, method="atla_ppo", env_id="Hopper-v4")
    results.main(["--sweep", str(tmp_path), "--no-figures"])
    cells = [c.strip() for c in (tmp_path / "results" / "table.md").read_text().splitlines()[2].strip("|").split("|")]
    assert cells[1] == label and cells[10] == paper and cells[11:] == rest


def test_models_kept_during_training_give_the_robustness_curve_without_a_finished_trial(tmp_path):
    """A 1M study mid-way: no done.json yet, attacked slim models every 200k (one at 1M sorts after 200k, not as text);
    over_training.csv has each model's columns, its worst and the shares of natural, and the figure is written."""
    kept = tmp_path / "models" / "checkpoints"
    kept.mkdir(parents=True)
    for step, (natural, mad, pgd) in {1000000: (10000.0, 7000.0, 6000.0), 200000: (8000.0, 2000.0, 600.0)}.items():
        attacks = {"natural": {"mean": natural, "std": 1.0}, "uniform": {"mean": natural - 100, "std": 1.0},
                   "mad": {"mean": mad, "std": 1.0}, "pgd": {"mean": pgd, "std": 1.0}}
        (kept / f"sac_valt_eps__HalfCheetah-v4__s1_step{step}_attacks.json").write_text(json.dumps(
            {"attacks": attacks, "worst": {"attack": "pgd", "mean": pgd, "std": 1.0}}))
    (kept / "notes_step_attacks.json").write_text("{}")  # not a kept model's row: skipped, named
    results.main(["--sweep", str(tmp_path)])
    lines = (tmp_path / "results" / "over_training.csv").read_text().splitlines()
    assert lines[1:] == ["sac_valt_eps,HalfCheetah-v4,1,200000,8000.0,7900.0,2000.0,600.0,600.0,pgd,0.988,0.250,0.075",
                         "sac_valt_eps,HalfCheetah-v4,1,1000000,10000.0,9900.0,7000.0,6000.0,6000.0,pgd,0.990,0.700,0.600"]
    assert (tmp_path / "results" / "robustness_over_training.png").stat().st_size > 10000
    assert not (tmp_path / "results" / "table.md").exists()
    table = (tmp_path / "results" / "over_training.md").read_text().splitlines()
    assert table[2:] == [
        "| HalfCheetah-v4 | 200,000 | VALT-EPS-SAC | 1 | 8000 ± 1 | 7900 ± 1 (99 %) | 2000 ± 1 (25 %) | 600 ± 1 (8 %) | 600 (pgd) |",
        "| HalfCheetah-v4 | 1,000,000 | VALT-EPS-SAC | 1 | 10000 ± 1 | 9900 ± 1 (99 %) | 7000 ± 1 (70 %) | 6000 ± 1 (60 %) "
        "| 6000 (pgd) |"]


def test_a_sweep_with_nothing_to_report_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        results.main(["--sweep", str(tmp_path)])
    assert "no finished trials" in capsys.readouterr().err


def test_a_kept_model_with_only_natural_or_a_negative_natural_leaves_blank_cells(tmp_path):
    kept = tmp_path / "models" / "checkpoints"
    kept.mkdir(parents=True)
    (kept / "sac__HalfCheetah-v4__s1_step200000_attacks.json").write_text(json.dumps(  # eval_all: worst None
        {"attacks": {"natural": {"mean": -200.0, "std": 1.0}}, "worst": None}))
    (kept / "sac__HalfCheetah-v4__s1_step400000_attacks.json").write_text(json.dumps(
        {"attacks": {"natural": {"mean": -200.0, "std": 1.0}, "pgd": {"mean": -250.0, "std": 1.0}},
         "worst": {"attack": "pgd", "mean": -250.0, "std": 1.0}}))
    results.main(["--sweep", str(tmp_path)])
    lines = (tmp_path / "results" / "over_training.csv").read_text().splitlines()
    assert lines[1:] == ["sac,HalfCheetah-v4,1,200000,-200.0,,,,,,,,",
                         "sac,HalfCheetah-v4,1,400000,-200.0,,,-250.0,-250.0,pgd,,,"]  # no share of a negative return
    table = (tmp_path / "results" / "over_training.md").read_text().splitlines()
    assert table[2:] == ["| HalfCheetah-v4 | 200,000 | SAC | 1 | -200 ± 1 | – | – | – | – |",
                         "| HalfCheetah-v4 | 400,000 | SAC | 1 | -200 ± 1 | – | – | -250 ± 1 | -250 (pgd) |"]
    assert (tmp_path / "results" / "robustness_over_training.png").is_file()
