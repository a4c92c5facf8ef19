"""Behaviour unchanged, proven: each method script's seeded tiny run backpropagates exactly the losses recorded in
tests/data/golden_losses.json (tests/golden.py, before a refactor) and ends with exactly the recorded networks."""
from __future__ import annotations

import json

import pytest
import torch

import golden  # tests/golden.py

GOLDEN = json.load(open(golden.PATH))


@pytest.mark.parametrize("name", list(golden.RUNS))
def test_tiny_run_reproduces_the_recorded_losses_bit_for_bit(name):
    assert GOLDEN["torch"] == torch.__version__, f"golden file recorded with torch {GOLDEN['torch']}"
    threads = torch.get_num_threads()
    try:
        now = golden.run(name)
    finally:
        torch.set_num_threads(threads)
    want = GOLDEN[name]
    assert now["args"] == want["args"]
    first = next((i for i, (a, b) in enumerate(zip(now["losses"], want["losses"])) if a != b), None)
    assert first is None, f"loss {first} differs: {now['losses'][first]!r} vs recorded {want['losses'][first]!r}"
    assert len(now["losses"]) == len(want["losses"])
    assert now["networks_sha256"] == want["networks_sha256"]
    assert now["eval_returns"] == want["eval_returns"]
