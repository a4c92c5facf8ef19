"""Observation attacks on checkpoints of this project; every evaluator runs alone or through eval_all.py."""
