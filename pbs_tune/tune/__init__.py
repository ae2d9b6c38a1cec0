"""The tuner: search space, calibration data, measurement and the Optuna study behind `pbs-tune sweep`."""
