"""Survival math: Cox partial likelihood, concordance, the 15-split protocol, KM plots."""
