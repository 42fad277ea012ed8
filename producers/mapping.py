"""Map rows of a company's export (CSV or Parquet) to churnwatch events, by a YAML file.

Another company's order table or receivables export needs only a new mapping
file, no code. Shape (see ``configs/mappings/`` for complete examples)::

    source:
      timezone: Europe/London          # for timestamps without an offset
      read: {sep: ","}                 # optional pandas read options (CSV)
    events:
      - type: order_placed             # one churnwatch event type
        when:                          # optional row filter, all must hold
          - {column: InvoiceNo, not_startswith: "C"}
        fields:
          event_id: {template: "order-{InvoiceNo}"}
          customer_id: {column: CustomerID, integer_text: true}
          occurred_at: {column: ts, format: "%Y-%m-%d %H:%M:%S"}
          order_id: {column: InvoiceNo}
          amount: {column: amount, abs: true}
          currency: {value: GBP}

A field is ``column`` (with optional ``format`` for timestamps, ``abs``,
``integer_text`` to turn ``12346.0`` into ``12346``), ``value`` (a constant)
or ``template`` (``{Column}`` placeholders). Filters: ``equals``,
``not_equals``, ``in``, ``startswith``, ``not_startswith``, ``empty``,
``not_empty`` (true/false), ``gt``, ``lt``. One row may give several events.
Rows that do not map to a valid event are reported with the reason, never
silently dropped. Quote column names that YAML would read as something else
(``no``, ``yes``, ``on``, ``off``, numbers): ``{column: "no"}``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from pipeline.events import TOPIC_OF_TYPE, CustomerEvent

_event_adapter: TypeAdapter[CustomerEvent] = TypeAdapter(CustomerEvent)


class MappingError(ValueError):
    """The mapping file, or the export it reads, is wrong; the message names the place."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    column: str | None = None
    value: Any = None
    template: str | None = None
    format: str | None = None
    abs: bool = False
    integer_text: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        sources = [self.column is not None, self.value is not None, self.template is not None]
        if sum(sources) != 1:
            raise ValueError("give exactly one of column, value, template")
        return self


class Condition(_Strict):
    column: str
    equals: Any = None
    not_equals: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    startswith: str | None = None
    not_startswith: str | None = None
    empty: bool | None = None
    not_empty: bool | None = None
    gt: float | None = None
    lt: float | None = None


class EventSpec(_Strict):
    type: str
    when: list[Condition] = []
    fields: dict[str, FieldSpec]

    @model_validator(mode="after")
    def _known_type(self) -> EventSpec:
        if self.type not in TOPIC_OF_TYPE:
            raise ValueError(f"unknown event type {self.type!r}; one of {sorted(TOPIC_OF_TYPE)}")
        return self


class SourceSpec(_Strict):
    timezone: str = "UTC"
    format: Literal["csv", "parquet"] | None = None
    read: dict[str, Any] = {}


class Mapping(_Strict):
    source: SourceSpec = SourceSpec()
    events: list[EventSpec] = Field(min_length=1)


def load_mapping(path: str | Path) -> Mapping:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MappingError(f"mapping file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise MappingError(f"mapping file {path} is not valid YAML: {exc}") from exc
    try:
        mapping = Mapping.model_validate(raw)
        ZoneInfo(mapping.source.timezone)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise MappingError(f"mapping file {path}: {problems}") from exc
    except ZoneInfoNotFoundError as exc:
        raise MappingError(
            f"mapping file {path}: source.timezone: unknown zone {mapping.source.timezone!r}"
        ) from exc
    return mapping


def read_table(path: str | Path, source: SourceSpec) -> pd.DataFrame:
    """The export as strings (no type guessing: the mapping decides)."""
    p = Path(path)
    kind = source.format or ("parquet" if p.suffix == ".parquet" else "csv")
    try:
        if kind == "parquet":
            return pd.read_parquet(p, **source.read).astype(str)
        return pd.read_csv(p, dtype=str, keep_default_na=False, **source.read)
    except FileNotFoundError as exc:
        raise MappingError(f"export file not found: {p}") from exc
    except (ValueError, TypeError, OSError) as exc:
        # a file of another format, a bad encoding, or a bad `source.read` option
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MappingError(
            f"cannot read {p} as {kind} (source.format / source.read): {reason}"
        ) from exc


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


def _field_value(row: dict[str, Any], spec: FieldSpec, tz: ZoneInfo) -> Any:
    if spec.value is not None:
        return spec.value
    if spec.template is not None:
        return _PLACEHOLDER.sub(lambda m: _clean(str(row[m.group(1)]), True), spec.template)
    assert spec.column is not None  # noqa: S101 - guaranteed by the validator
    text = str(row[spec.column]).strip()
    if spec.format is not None:
        moment = datetime.strptime(text, spec.format)  # noqa: DTZ007 - zone added below
        return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment
    if spec.abs:
        return abs(float(text))
    return _clean(text, spec.integer_text)


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


def map_rows(
    frame: pd.DataFrame, mapping: Mapping
) -> Iterator[tuple[int, CustomerEvent | Rejected]]:
    """Every event the mapping makes from each row, or why a row's event was rejected."""
    tz = ZoneInfo(mapping.source.timezone)
    for spec in mapping.events:
        for cond in spec.when:
            if cond.column not in frame.columns:
                raise MappingError(f"events[{spec.type}]: filter column {cond.column!r} not found")
        for name, field in spec.fields.items():
            if field.column and field.column not in frame.columns:
                raise MappingError(
                    f"events[{spec.type}].fields.{name}: column {field.column!r} not in the "
                    f"file (columns: {', '.join(frame.columns)})"
                )
    for number, row in enumerate(frame.to_dict("records"), start=1):
        for spec in mapping.events:
            if not all(_matches(row, cond) for cond in spec.when):
                continue
            try:
                payload = {"type": spec.type}
                for name, field in spec.fields.items():
                    payload[name] = _field_value(row, field, tz)
                yield number, _event_adapter.validate_python(payload)
            except (ValidationError, ValueError, KeyError) as exc:
                reason = (
                    "; ".join(
                        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                    )
                    if isinstance(exc, ValidationError)
                    else f"{type(exc).__name__}: {exc}"
                )
                yield number, Rejected(number, spec.type, row, reason)


def load_events(
    path: str | Path, mapping_path: str | Path
) -> tuple[list[CustomerEvent], list[Rejected]]:
    """All events of an export, sorted by event time, and the rejected rows."""
    mapping = load_mapping(mapping_path)
    frame = read_table(path, mapping.source)
    events: list[CustomerEvent] = []
    rejected: list[Rejected] = []
    for _number, item in map_rows(frame, mapping):
        if isinstance(item, Rejected):
            rejected.append(item)
        else:
            events.append(item)
    events.sort(key=lambda e: e.occurred_at)
    return events, rejected
