"""Load a company's export as churnwatch events, by its mapping (:mod:`producers.mapping`).

Each row goes through the mapping's events: the filters (``when``), then each
field's value, grouped rows (``group_by``) combined into one event; the event
is validated like any message the worker reads. A row that does not make a
valid event is kept with the reason (:class:`Rejected`), and an event id made
before is refused as a duplicate; :class:`Loaded` says what came of a file.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from churnwatch.pipeline.events import CustomerEvent
from churnwatch.producers.mapping import (
    Condition,
    EventSpec,
    FieldSpec,
    Mapping,
    MappingError,
    load_mapping,
    read_table,
)

_event_adapter: TypeAdapter[CustomerEvent] = TypeAdapter(CustomerEvent)


def _matches(row: dict[str, Any], cond: Condition) -> bool:
    if cond.column not in row:
        raise MappingError(f"filter column {cond.column!r} is not in the file")
    cell = row[cond.column]
    text = "" if cell is None else str(cell)
    checks: list[bool] = []
    if cond.equals is not None:
        checks.append(text == str(cond.equals))
    if cond.not_equals is not None:
        checks.append(text != str(cond.not_equals))
    if cond.in_ is not None:
        checks.append(text in {str(v) for v in cond.in_})
    if cond.startswith is not None:
        checks.append(text.startswith(cond.startswith))
    if cond.not_startswith is not None:
        checks.append(not text.startswith(cond.not_startswith))
    if cond.empty is not None:
        checks.append((text.strip() == "") == cond.empty)
    if cond.not_empty is not None:
        checks.append((text.strip() != "") == cond.not_empty)
    if cond.gt is not None:
        checks.append(_number(text) > cond.gt)
    if cond.lt is not None:
        checks.append(_number(text) < cond.lt)
    return all(checks)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value


_PLACEHOLDER = re.compile(r"{([^{}]+)}")
_NUMBER = re.compile(r"-?\d+(\.\d*)?")
#: Event fields that hold a moment (read with the source's time zone).
_TIME_FIELDS = frozenset({"occurred_at", "due_date"})


def _field_value(row: dict[str, Any], spec: FieldSpec, tz: ZoneInfo, number: int, name: str) -> Any:
    if spec.value is not None:
        return spec.value
    if spec.template is not None:
        return _PLACEHOLDER.sub(
            lambda m: str(number) if m.group(1) == "_row" else _clean(str(row[m.group(1)]), True),
            spec.template,
        )
    assert spec.column is not None  # noqa: S101 - guaranteed by the validator
    text = str(row[spec.column]).strip()
    if not text:
        return None  # missing: the event's default, or "field required"
    if name in _TIME_FIELDS or spec.format is not None:
        return _moment(text, spec.format, tz)
    if spec.abs:
        return abs(float(text))
    return _clean(text, spec.integer_text)


def _moment(text: str, fmt: str | None, tz: ZoneInfo) -> datetime:
    """A timestamp cell as an aware datetime (see the module docstring)."""
    if fmt in ("epoch", "epoch_ms"):
        seconds = float(text) / (1000 if fmt == "epoch_ms" else 1)
        return datetime.fromtimestamp(seconds, tz=UTC)
    if fmt is not None:
        moment = datetime.strptime(text, fmt)  # noqa: DTZ007 - zone added below
    elif _NUMBER.fullmatch(text):
        hint = (
            "format: '%Y%m%d'"
            if len(text) == 8
            else "format: epoch (Unix seconds) or epoch_ms, or the strptime format"
        )
        raise ValueError(f"{text!r} is a number, not a date: give the column a {hint}")
    else:
        moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment


def _clean(text: str, integer_text: bool) -> str:
    if integer_text and re.fullmatch(r"-?\d+\.0+", text):
        return text.split(".")[0]
    return text


@dataclass(frozen=True, slots=True)
class Rejected:
    row_number: int  # 1-based data row (header excluded)
    event_type: str
    row: dict[str, Any]
    error: str


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return f"{type(exc).__name__}: {exc}"


def _combine(values: list[Any], how: str) -> Any:
    present = [v for v in values if v is not None]
    if how == "count":
        return len(values)
    if not present:
        return None
    if how == "sum":
        return round(sum(float(v) for v in present), 6)
    if how == "min":
        return min(present)
    if how == "max":
        return max(present)
    return present[-1] if how == "last" else present[0]


def _check_columns(frame: pd.DataFrame, spec: EventSpec) -> None:
    for cond in spec.when:
        if cond.column not in frame.columns:
            raise MappingError(f"events[{spec.type}]: filter column {cond.column!r} not found")
    for column in spec.group_by:
        if column not in frame.columns:
            raise MappingError(f"events[{spec.type}].group_by: column {column!r} not found")
    for name, fspec in spec.fields.items():
        if fspec.column and fspec.column not in frame.columns:
            raise MappingError(
                f"events[{spec.type}].fields.{name}: column {fspec.column!r} not in the "
                f"file (columns: {', '.join(frame.columns)})"
            )


def map_rows(
    frame: pd.DataFrame, mapping: Mapping
) -> Iterator[tuple[int, CustomerEvent | Rejected]]:
    """Every event the mapping makes from each row (or group of rows: ``group_by``),
    or why it was rejected, with the (first) row's number."""
    tz = ZoneInfo(mapping.source.timezone)
    for spec in mapping.events:
        _check_columns(frame, spec)
    records = frame.to_dict("records")
    groups: dict[int, dict[tuple[str, ...], list[int]]] = {}
    for index, spec in enumerate(mapping.events):
        if spec.group_by:
            members = groups[index] = {}
            for i, row in enumerate(records):
                if all(_matches(row, cond) for cond in spec.when):
                    key = tuple(str(row[c]) for c in spec.group_by)
                    members.setdefault(key, []).append(i)
    for i, row in enumerate(records):
        number = i + 1
        for spec in mapping.events:
            if spec.group_by:
                continue
            if not all(_matches(row, cond) for cond in spec.when):
                continue
            try:
                payload: dict[str, Any] = {"type": spec.type}
                for name, fspec in spec.fields.items():
                    value = _field_value(row, fspec, tz, number, name)
                    if value is not None:
                        payload[name] = value
                yield number, _event_adapter.validate_python(payload)
            except (ValidationError, ValueError, KeyError) as exc:
                yield number, Rejected(number, spec.type, row, _reason(exc))
    for index, members in groups.items():
        spec = mapping.events[index]
        for rows in members.values():
            first = rows[0] + 1
            try:
                payload = {"type": spec.type}
                for name, fspec in spec.fields.items():
                    values = [
                        _field_value(records[r], fspec, tz, r + 1, name)
                        for r in (rows if fspec.aggregate != "first" else rows[:1])
                    ]
                    value = _combine(values, fspec.aggregate)
                    if value is not None:
                        payload[name] = value
                yield first, _event_adapter.validate_python(payload)
            except (ValidationError, ValueError, KeyError) as exc:
                reason = f"{_reason(exc)} (group of {len(rows)} rows)"
                yield first, Rejected(first, spec.type, records[rows[0]], reason)


@dataclass
class Loaded:
    """What loading an export gave: the events, the rejected rows, and a summary."""

    events: list[CustomerEvent]
    rejected: list[Rejected]
    rows: int
    by_type: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # rejected, by reason's first part

    def summary(self) -> str:
        """Rows read, events made per type, rows rejected and why, dates, customers."""
        lines = [f"{self.rows:,} rows read, {len(self.events):,} events made"]
        if self.events:
            first, last = self.events[0].occurred_at, self.events[-1].occurred_at
            customers = len({e.customer_id for e in self.events})
            lines[0] += (
                f" for {customers:,} customers, "
                f"{first:%Y-%m-%d} to {last:%Y-%m-%d} ({(last - first).days:,} days)"
            )
        for kind, count in sorted(self.by_type.items()):
            lines.append(f"  {kind}: {count:,}")
        if self.rejected:
            lines.append(f"{len(self.rejected):,} row(s) rejected:")
            for reason, count in self.reasons.most_common(5):
                lines.append(f"  {count:,} x {reason}")
            example = self.rejected[0]
            lines.append(f"  e.g. row {example.row_number} ({example.event_type}): {example.error}")
        return "\n".join(lines)


def _short(reason: str) -> str:
    """A rejection reason without the row's own values (to count alike ones together)."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", reason)[:120]


def load_export(
    path: str | Path, mapping_path: str | Path, made: dict[str, tuple[str, int]] | None = None
) -> Loaded:
    """All events of an export, sorted by event time; rejected rows; a summary.

    An event whose id an earlier row already made is rejected as a duplicate:
    applied, it would be skipped as redelivered; kept, it would count twice.
    ``made`` (event id -> file name, row) carries the ids of exports loaded
    before, so a later export's copies are refused the same way.
    """
    mapping = load_mapping(mapping_path)
    frame = read_table(path, mapping.source)
    loaded = Loaded([], [], len(frame))
    made = {} if made is None else made
    name = Path(path).name
    for number, item in map_rows(frame, mapping):
        if not isinstance(item, Rejected) and item.event_id in made:
            file, row = made[item.event_id]
            where = f"row {row}" if file == name else f"row {row} of {file}"
            reason = (
                f"duplicate event id {item.event_id!r} ({where} made it): "
                "one row per order line? group them (group_by), or make the ids distinct "
                "(e.g. {_row})"
            )
            item = Rejected(number, item.type, frame.iloc[number - 1].to_dict(), reason)
        if isinstance(item, Rejected):
            loaded.rejected.append(item)
            loaded.reasons[_short(item.error)] += 1
            continue
        made[item.event_id] = (name, number)
        loaded.events.append(item)
        loaded.by_type[item.type] += 1
    loaded.events.sort(key=lambda e: e.occurred_at)
    loaded.rejected.sort(key=lambda r: r.row_number)
    return loaded


def load_exports(pairs: list[tuple[Path, Path]]) -> list[Loaded]:
    """:func:`load_export` of each (export, mapping); an event id made by an earlier
    export is refused as a duplicate in the later one, as within one file."""
    made: dict[str, tuple[str, int]] = {}
    return [load_export(path, mapping_path, made) for path, mapping_path in pairs]


def load_events(
    path: str | Path, mapping_path: str | Path
) -> tuple[list[CustomerEvent], list[Rejected]]:
    """All events of an export, sorted by event time, and the rejected rows."""
    loaded = load_export(path, mapping_path)
    return loaded.events, loaded.rejected
