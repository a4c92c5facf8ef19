"""attacks/zoo.py: the catalogue row of a model comes from its checkpoint and the attack JSON eval_all wrote next
to it; a model not attacked yet says so; no model is one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from conftest import ROOT

FIXTURE = os.path.join(ROOT, "tests", "data", "sac_halfcheetah_30k.pt")


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_zoo_lists_each_model_with_its_attack_numbers(tmp_path):
    models = tmp_path / "studies" / "demo" / "models"
    (models / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE, models / "sac__HalfCheetah-v4__s1.pt")
    shutil.copy(FIXTURE, models / "checkpoints" / "sac__HalfCheetah-v4__s1_step30000.pt")
    proc = run(os.path.join(ROOT, "attacks", "eval_all.py"), "--ckpt", str(models / "sac__HalfCheetah-v4__s1.pt"),
               "--attacks", "natural,uniform", "--episodes", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((models / "sac__HalfCheetah-v4__s1_attacks.json").read_text())
    proc = run(os.path.join(ROOT, "attacks", "zoo.py"), "--results", "studies", "--out", "studies/ZOO.md",
               cwd=tmp_path)
    assert proc.returncode == 0 and "2 models" in proc.stdout, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(" `"): line for line in (tmp_path / "studies" / "ZOO.md").read_text().splitlines()
            if line.startswith("| `")}
    attacked = rows["studies/demo/models/sac__HalfCheetah-v4__s1.pt"]
    worst = report["worst"]
    assert f"| {report['attacks']['natural']['mean']:.0f} | {worst['mean']:.0f} ({worst['attack']}) |" in attacked
    assert "| SAC | HalfCheetah-v4 | 30,000 | " in attacked and "[demo](demo/README.md)" in attacked
    assert "not attacked yet" in rows["studies/demo/models/checkpoints/sac__HalfCheetah-v4__s1_step30000.pt"]


def test_no_models_is_one_line(tmp_path):
    proc = run(os.path.join(ROOT, "attacks", "zoo.py"), "--results", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: no slim models under {tmp_path}/*/models/"


def test_an_unreadable_model_is_one_line(tmp_path):
    (tmp_path / "demo" / "models").mkdir(parents=True)
    (tmp_path / "demo" / "models" / "broken.pt").write_bytes(b"not a torch file")
    proc = run(os.path.join(ROOT, "attacks", "zoo.py"), "--results", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "is not a readable checkpoint" in proc.stderr
