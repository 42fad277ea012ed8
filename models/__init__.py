"""Batch code: point-in-time training sets, training and the baselines, the model
report, how warnings score against what customers did next (``outcomes``) and
the backtest of rules and model over a history."""
