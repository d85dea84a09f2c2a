"""Forecasting side of TRAIL: features, datasets, scorers (baselines and the TRAIL model), evaluation."""
