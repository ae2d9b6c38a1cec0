"""Compiled-kernel libraries of the shipped profiles (installed as package data: pbs_tune.cache)."""
