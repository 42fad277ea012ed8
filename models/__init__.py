"""Batch code: point-in-time training sets, training and the baselines, the model
report and the backtest of rules and model over a history."""
