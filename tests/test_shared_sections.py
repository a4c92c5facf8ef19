"""The method scripts share their plumbing byte for byte, so `diff sac.py X` shows only the method: each section
named here must be identical to sac.py's (SAC family) or ppo.py's (PPO family), and the run harness is one and the
same in all of them."""
from __future__ import annotations

import os
import re

import pytest

from conftest import ROOT

SAC_FAMILY = ["sac.py", "robust_sac.py", "sac_valt_eps.py", "sac_valt_soft.py", "sac_ppo.py"]
PPO_FAMILY = ["ppo.py", "robust_ppo.py", "atla_ppo.py", "wocar_ppo.py"]
SHARED = {"sac.py": ("Environment", "Observation normalizer", "Prioritized replay", "Evaluation", "Run harness"),
          "ppo.py": ("Environment", "Observation normalizer", "Rollout", "Evaluation", "Run harness")}
ONE_COPY = ("Environment", "Observation normalizer", "Evaluation", "Run harness")  # the same in all nine


def sections(script: str) -> dict:
    """Section name -> text, a section running from its `# --- Name ...` header to the next header."""
    text = open(os.path.join(ROOT, script)).read()
    parts = re.split(r"^# --- ([^-:]+?)(?:[:(].*)? -+$", text, flags=re.M)
    return {name.strip(): body for name, body in zip(parts[1::2], parts[2::2])}


def test_the_sections_are_found():
    found = sections("sac.py")
    assert set(SHARED["sac.py"]) <= set(found) and "if __name__" in found["Run harness"]


@pytest.mark.parametrize("script", SAC_FAMILY[1:] + PPO_FAMILY[1:])
def test_shared_sections_are_identical_to_the_base_script(script):
    base = "sac.py" if script in SAC_FAMILY else "ppo.py"
    mine, theirs = sections(script), sections(base)
    for name in SHARED[base]:
        assert name in mine, f"{script} has no section {name!r}"
        assert mine[name] == theirs[name], f"{script}: section {name!r} differs from {base}'s"


@pytest.mark.parametrize("script", PPO_FAMILY)
def test_the_ppo_family_shares_the_sac_familys_plumbing(script):
    mine = sections(script)
    for name in ONE_COPY:
        assert mine[name] == sections("sac.py")[name], f"{script}: section {name!r} differs from sac.py's"


def sync(script: str) -> list:
    """Rewrites `script`'s shared sections as copies of its base script's; returns the names of those it changed."""
    base = "sac.py" if script in SAC_FAMILY else "ppo.py"
    path = os.path.join(ROOT, script)
    text, mine, theirs = open(path).read(), sections(script), sections(base)
    theirs.update({name: sections("sac.py")[name] for name in ONE_COPY})
    changed = [name for name in SHARED[base] if name in mine and mine[name] != theirs[name]]
    for name in changed:
        head = re.search(rf"^# --- {re.escape(name)}\b.*$", text, flags=re.M).group(0)
        text = text.replace(head + mine[name], head + theirs[name], 1)
    open(path, "w").write(text)
    return changed


if __name__ == "__main__":  # python tests/test_shared_sections.py robust_sac.py ...: copy the base's sections over
    import sys

    for name in sys.argv[1:]:
        print(name, sync(name))
