"""Batch code: backtest of the rules, point-in-time training sets (the churn model comes next)."""
