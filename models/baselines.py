"""The simple models the churn model must beat, scored on the same test rows.

- ``recency``: days since the last order (longer silence, more risk);
- ``frequency``: orders in the past 365 days (fewer orders, more risk);
- ``logistic``: logistic regression on the model's own inputs;
- ``bgnbd``: the BG/NBD model (Fader, Hardie & Lee 2005, "Counting your
  customers the easy way"), fitted here with scipy on the order history
  summary (repeat orders, time of last order, age, in weeks). Its score is the
  probability of no order in the horizon: 1 - P(alive) x P(at least one order
  | alive), with the posterior Gamma purchase rate (dropout inside the horizon
  ignored). P(alive) alone ranks one-time buyers as certainly alive, which is
  the opposite of what a "no order in 90 days" label wants.

Each has ``fit(train)``, ``raw(rows)`` (its own score, higher is riskier: what
the ranking metrics read) and ``score(rows)`` (a probability: what the Brier
score reads). A raw score that is not a probability (recency, frequency,
BG/NBD's) is mapped to one by isotonic regression fitted on the training
rows. The mapping is monotone but not strictly: it merges neighbouring values
into steps, and ranking the mapped scores would tie customers the raw score
tells apart (frequency's ROC-AUC on Online Retail fell from 0.857 to 0.836 that
way), so the ranking metrics read the raw score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from churnwatch.pipeline.scoring import INPUT_FEATURES

Vector = npt.NDArray[np.float64]
LABEL = "churned"
WEEK_DAYS = 7.0


class Baseline(Protocol):
    name: str

    def fit(self, train: pd.DataFrame) -> None: ...

    def raw(self, rows: pd.DataFrame) -> Vector: ...

    def score(self, rows: pd.DataFrame) -> Vector: ...


@dataclass
class _Ranked:
    """A one-number score, turned into a probability by isotonic regression."""

    name: str
    column: str
    sign: float
    _iso: IsotonicRegression = field(
        default_factory=lambda: IsotonicRegression(out_of_bounds="clip")
    )

    def raw(self, rows: pd.DataFrame) -> Vector:
        values = rows[self.column].to_numpy(dtype=float)
        fill = np.nanmax(values) if self.sign > 0 else np.nanmin(values)
        return np.asarray(self.sign * np.where(np.isnan(values), fill, values), dtype=float)

    def fit(self, train: pd.DataFrame) -> None:
        self._iso.fit(self.raw(train), train[LABEL].to_numpy())

    def score(self, rows: pd.DataFrame) -> Vector:
        return np.asarray(self._iso.predict(self.raw(rows)), dtype=float)


class Logistic:
    name = "logistic"

    def __init__(self) -> None:
        self.pipeline: Pipeline = make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(max_iter=2000),
        )

    def fit(self, train: pd.DataFrame) -> None:
        self.pipeline.fit(train[list(INPUT_FEATURES)].to_numpy(dtype=float), train[LABEL])

    def score(self, rows: pd.DataFrame) -> Vector:
        proba = self.pipeline.predict_proba(rows[list(INPUT_FEATURES)].to_numpy(dtype=float))
        return np.asarray(proba[:, 1], dtype=float)

    raw = score  # a probability already


def bgnbd_log_likelihood(params: Vector, x: Vector, t_x: Vector, big_t: Vector) -> Vector:
    """Log-likelihood of each customer's (x, t_x, T) under BG/NBD (r, alpha, a, b)."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + big_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return np.asarray(a1 + a2 + np.logaddexp(a3, a4), dtype=float)


def p_no_order(params: Vector, x: Vector, t_x: Vector, big_t: Vector, horizon: float) -> Vector:
    """P(no order in the next ``horizon`` weeks) under BG/NBD (see the module docstring)."""
    r, alpha, _a, _b = params
    silent_if_alive = ((alpha + big_t) / (alpha + big_t + horizon)) ** (r + x)
    return np.asarray(1.0 - p_alive(params, x, t_x, big_t) * (1.0 - silent_if_alive), dtype=float)


def p_alive(params: Vector, x: Vector, t_x: Vector, big_t: Vector) -> Vector:
    """P(the customer is still active) given its (x, t_x, T)."""
    r, alpha, a, b = params
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        odds = (a / (b + x - 1)) * ((alpha + big_t) / (alpha + t_x)) ** (r + x)
    return np.asarray(np.where(x > 0, 1.0 / (1.0 + odds), 1.0), dtype=float)


class BGNBD:
    """BG/NBD fitted by maximum likelihood on the latest training snapshot."""

    name = "bgnbd"

    def __init__(self, horizon_days: float) -> None:
        self.horizon = horizon_days / WEEK_DAYS
        self.params: Vector = np.array([1.0, 1.0, 1.0, 1.0])
        self._iso = IsotonicRegression(out_of_bounds="clip")

    @staticmethod
    def summary(rows: pd.DataFrame) -> tuple[Vector, Vector, Vector]:
        x = rows["rfm_repeat_orders"].to_numpy(dtype=float)
        t_x = rows["rfm_last_order_age_days"].to_numpy(dtype=float) / WEEK_DAYS
        big_t = rows["rfm_age_days"].to_numpy(dtype=float) / WEEK_DAYS
        return x, t_x, big_t

    def raw(self, rows: pd.DataFrame) -> Vector:
        return p_no_order(self.params, *self.summary(rows), self.horizon)

    def fit(self, train: pd.DataFrame) -> None:
        snapshot = train[train["cutoff"] == train["cutoff"].max()]
        x, t_x, big_t = self.summary(snapshot)

        def loss(log_params: Vector) -> float:
            params = np.exp(log_params)
            penalty = 1e-3 * float(np.sum(params**2))  # keeps a flat likelihood finite
            return -float(np.mean(bgnbd_log_likelihood(params, x, t_x, big_t))) + penalty

        result = minimize(loss, np.zeros(4), method="Nelder-Mead", options={"maxiter": 4000})
        self.params = np.exp(result.x)
        self._iso.fit(self.raw(train), train[LABEL].to_numpy())

    def score(self, rows: pd.DataFrame) -> Vector:
        return np.asarray(self._iso.predict(self.raw(rows)), dtype=float)


def all_baselines(horizon_days: float) -> list[Baseline]:
    return [
        _Ranked("recency", "days_since_last_order", 1.0),
        _Ranked("frequency", "rfm_orders_52w", -1.0),
        Logistic(),
        BGNBD(horizon_days),
    ]
