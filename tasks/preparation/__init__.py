"""From stored ratings to model inputs: the holdout split, feature tables, scalers, user
histories.
"""
