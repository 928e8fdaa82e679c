"""Offline evaluation of CoEA against baselines and ablations."""
