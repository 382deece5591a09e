"""How good a model is: ranking metrics, baselines, the holdout evaluation, the quality gate,
drift.
"""
