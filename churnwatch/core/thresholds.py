"""The warning rules' thresholds: the ``warnings:`` section of the settings.

Every threshold of a rule is here, with its default and its bounds;
``configs/default.yaml`` sets them and says why. ``segments`` overrides any of
them for the customers of one segment (:meth:`WarningThresholds.for_segment`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator


class Section(BaseModel):
    """A section of the settings: unknown keys are errors, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SalesDropThresholds(Section):
    min_expected_orders: float = Field(5.0, gt=0)
    enter_ratio: float = Field(0.4, gt=0, lt=1)
    exit_ratio: float = Field(0.7, gt=0, le=1)
    enter_silence_chance: float = Field(0.05, gt=0, lt=1)
    exit_silence_chance: float = Field(0.2, gt=0, lt=1)
    prior_gap_days: float = Field(30.0, gt=0)
    prior_gaps: float = Field(1.0, gt=0)
    min_silence_days: float = Field(28.0, gt=0)
    longest_gap_margin: float = Field(1.2, ge=0)
    seasonal_tolerance: float = Field(0.4, gt=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, values: Any) -> Any:
        # Settings files written before the silence was judged by its chance.
        if isinstance(values, dict):
            for old in ("enter_silence_ratio", "exit_silence_ratio"):
                if old in values:
                    new = old.replace("ratio", "chance")
                    raise ValueError(
                        f"{old} was replaced by {new}: a silence is judged by how unlikely "
                        "it is at the customer's own pace (docs/features.md, Sales drop)"
                    )
        return values

    @model_validator(mode="after")
    def _exit_above_enter(self) -> SalesDropThresholds:
        if self.exit_silence_chance < self.enter_silence_chance:
            raise ValueError("exit_silence_chance must not be below enter_silence_chance")
        return self


class OverdueDebtThresholds(Section):
    enter_days_past_due: float = Field(30.0, gt=0)
    exit_days_past_due: float = Field(10.0, ge=0)
    min_overdue_amount: float = Field(100.0, ge=0)


class CoolingEngagementThresholds(Section):
    min_expected_contacts: float = Field(5.0, gt=0)
    enter_ratio: float = Field(0.2, gt=0, lt=1)
    exit_ratio: float = Field(0.5, gt=0, le=1)
    enter_silence_days: float = Field(60.0, gt=0)
    exit_silence_days: float = Field(21.0, gt=0)
    enter_silence_gaps: float = Field(4.0, gt=1)
    exit_silence_gaps: float = Field(2.0, gt=0)


class ComplaintTroubleThresholds(Section):
    enter_complaints_4w: float = Field(3.0, gt=0)
    exit_complaints_4w: float = Field(1.0, ge=0)
    surge_factor: float = Field(3.0, ge=1)
    enter_unresolved_days: float = Field(21.0, gt=0)
    exit_unresolved_days: float = Field(10.0, ge=0)
    enter_returns_share: float = Field(0.5, gt=0)
    exit_returns_share: float = Field(0.25, ge=0)
    min_returns_amount: float = Field(200.0, ge=0)


#: The book's churn rate assumed for a model whose card does not say it.
UNKNOWN_BOOK_CHURN_RATE = 0.5


class ChurnRiskThresholds(Section):
    """The model's churn-risk warning, relative to what the customer's rhythm
    predicts: it opens once a customer's probability is ``enter_share`` of the way
    from the churn rate of the model's training rows of the customer's rhythm
    (``relative_to: rhythm``; ``book``: of all its training rows) to certainty,
    and resolves below ``exit_share`` of the way. Where 46% churn, 0.1 and 0 open
    at 0.514 and resolve below 0.46; where 6% churn, at 0.154 and below 0.06:
    never silent because the book or the rhythm churns little. ``enter_probability`` and
    ``exit_probability`` set absolute thresholds instead (both or neither).

    An open warning gets worse as the probability climbs: medium once it is
    ``medium_step`` of the way from the enter bound to certainty, high at
    ``high_step`` (one grade more for a high-value customer), so a key account
    whose risk rises from 16% to 69% is told again, not left at its opening's
    severity."""

    enter_share: float = Field(0.1, ge=0, lt=1)
    exit_share: float = Field(0.0, ge=0, lt=1)
    medium_step: float = Field(0.25, gt=0, lt=1)
    high_step: float = Field(0.5, gt=0, lt=1)
    enter_probability: float | None = Field(None, gt=0, lt=1)
    exit_probability: float | None = Field(None, gt=0, lt=1)
    #: What the shares are measured from: ``book``, the churn rate of the model's
    #: training rows; ``rhythm``, that of its training rows of the customer's own
    #: order rhythm (orders in the past 52 weeks: 1, 2-4, 5-11, 12+), so the
    #: warning opens on what the model sees beyond the rhythm (docs/model.md).
    relative_to: Literal["book", "rhythm"] = "rhythm"

    @model_validator(mode="after")
    def _exit_below_enter(self) -> ChurnRiskThresholds:
        if (self.enter_probability is None) != (self.exit_probability is None):
            raise ValueError("set both enter_probability and exit_probability, or neither")
        if self.exit_share > self.enter_share:
            raise ValueError("exit_share must not be above enter_share")
        if self.high_step <= self.medium_step:
            raise ValueError("high_step must be above medium_step")
        if (
            self.enter_probability is not None
            and self.exit_probability is not None
            and self.exit_probability > self.enter_probability
        ):
            raise ValueError("exit_probability must not be above enter_probability")
        return self

    def bounds(self, book_churn_rate: float | None) -> tuple[float, float]:
        """(enter, exit) probabilities for a model trained on a book with this churn rate."""
        if self.enter_probability is not None and self.exit_probability is not None:
            return self.enter_probability, self.exit_probability
        rate = UNKNOWN_BOOK_CHURN_RATE if book_churn_rate is None else book_churn_rate
        rate = min(max(rate, 0.0), 0.99)
        return rate + self.enter_share * (1 - rate), rate + self.exit_share * (1 - rate)

    def bounds_of(self, rates: Any) -> tuple[Any, Any]:
        """:meth:`bounds` for many customers at once, each from its own ``rates``
        (an array; NaN: unknown, as :data:`UNKNOWN_BOOK_CHURN_RATE`)."""
        import numpy as np

        if self.enter_probability is not None and self.exit_probability is not None:
            shape = np.shape(rates)
            return np.full(shape, self.enter_probability), np.full(shape, self.exit_probability)
        rate = np.clip(np.where(np.isnan(rates), UNKNOWN_BOOK_CHURN_RATE, rates), 0.0, 0.99)
        return rate + self.enter_share * (1 - rate), rate + self.exit_share * (1 - rate)

    def severity_steps(self, enter: Any) -> tuple[Any, Any]:
        """The probabilities at which an open warning (opened at ``enter``) becomes
        medium and high."""
        return enter + self.medium_step * (1 - enter), enter + self.high_step * (1 - enter)


class HealthWeights(Section):
    """The health score's weight of each signal family (``pipeline/health.py``):
    the score is the weighted mean of the families known for the customer, so
    only the ratios matter. ``store_step``: how many points the score must move
    before the state records it anew (it is recorded once a week in any case),
    so a silent customer's slowly sliding score does not rewrite its state
    every day."""

    buying: float = Field(0.35, ge=0)
    paying: float = Field(0.2, ge=0)
    engagement: float = Field(0.15, ge=0)
    service: float = Field(0.1, ge=0)
    risk: float = Field(0.2, ge=0)
    store_step: int = Field(5, ge=1, le=100)

    @model_validator(mode="after")
    def _some_weight(self) -> HealthWeights:
        if not any((self.buying, self.paying, self.engagement, self.service, self.risk)):
            raise ValueError("at least one health weight must be above 0")
        return self


class WarningThresholds(Section):
    recent_weeks: int = Field(8, ge=2, le=11)
    baseline_weeks: int = Field(26, ge=4, le=44)
    high_value_revenue: float = Field(50_000.0, ge=0)
    min_episode_days: float = Field(14.0, ge=0)
    language: Literal["en", "zh-CN"] = "en"
    sales_drop: SalesDropThresholds = SalesDropThresholds()
    overdue_debt: OverdueDebtThresholds = OverdueDebtThresholds()
    cooling_engagement: CoolingEngagementThresholds = CoolingEngagementThresholds()
    complaint_trouble: ComplaintTroubleThresholds = ComplaintTroubleThresholds()
    churn_risk: ChurnRiskThresholds = ChurnRiskThresholds()
    health: HealthWeights = HealthWeights()
    #: Per-segment overrides of any of the keys above, e.g.
    #: ``{key_account: {sales_drop: {enter_ratio: 0.6}}}``.
    segments: dict[str, dict[str, Any]] = {}
    _by_segment: dict[str, WarningThresholds] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _merge_segments(self) -> WarningThresholds:
        base = self.model_dump(exclude={"segments"})
        for segment, overrides in self.segments.items():
            try:
                merged = WarningThresholds(**deep_merge(base, overrides))
            except ValidationError as exc:
                problems = "; ".join(
                    f"segments.{segment}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors()
                )
                raise ValueError(problems) from None
            if merged.segments:
                raise ValueError(f"segments.{segment}: a segment cannot have segments")
            self._by_segment[segment] = merged
        return self

    def for_segment(self, segment: str) -> WarningThresholds:
        """The thresholds for a customer of ``segment`` (the defaults if not overridden)."""
        # Called for every customer in every sweep: a private attribute goes
        # through pydantic's slow __getattr__, a field does not.
        if segment not in self.segments:
            return self
        return self._by_segment[segment]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s keys, nested dictionaries merged key by key."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = value
    return result
