"""The data model at the bottom of pbs-tune: PBS parameters, launch configs, the target GPU,
profiles and their entries with typed provenance, and where profiles are stored. No torch."""
