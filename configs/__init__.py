"""Tuned profiles shipped with pbs-tune (installed as package data: pbs_tune.configs)."""
