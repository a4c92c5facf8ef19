"""The method scripts share their plumbing byte for byte, so `diff sac.py X` shows only the method: each section
named here must be identical to sac.py's (SAC family) or ppo.py's (PPO family), and the run harness is one and the
same in all of them."""
from __future__ import annotations

import os
import re

import pytest

from conftest import ROOT

SAC_FAMILY = ["sac.py"]
PPO_FAMILY = ["ppo.py"]
SHARED = {"sac.py": ("Environment", "Observation normalizer", "Prioritized replay", "Evaluation", "Run harness"),
          "ppo.py": ("Environment", "Observation normalizer", "Rollout", "Evaluation", "Run harness")}


def sections(script: str) -> dict:
    """Section name -> text, a section running from its `# --- Name ...` header to the next header."""
    text = open(os.path.join(ROOT, script)).read()
    parts = re.split(r"^# --- ([^-:]+?)(?:[:(].*)? -+$", text, flags=re.M)
    return {name.strip(): body for name, body in zip(parts[1::2], parts[2::2])}


def test_the_sections_are_found():
    found = sections("sac.py")
    assert set(SHARED["sac.py"]) <= set(found) and "if __name__" in found["Run harness"]


@pytest.mark.parametrize("script", SAC_FAMILY + PPO_FAMILY)
def test_shared_sections_are_identical_to_the_base_script(script):
    base = "sac.py" if script in SAC_FAMILY else "ppo.py"
    mine, theirs = sections(script), sections(base)
    for name in SHARED[base]:
        assert name in mine, f"{script} has no section {name!r}"
        assert mine[name] == theirs[name], f"{script}: section {name!r} differs from {base}'s"
    assert mine["Run harness"] == sections("sac.py")["Run harness"], f"{script}: the run harness differs from sac.py's"
