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
or ``template`` (``{Column}`` placeholders; ``{_row}`` is the row's number,
for exports whose rows have no id of their own). Filters: ``equals``,
``not_equals``, ``in``, ``startswith``, ``not_startswith``, ``empty``,
``not_empty`` (true/false), ``gt``, ``lt``. One row may give several events.

**One row per order line** (a basket, an invoice with its lines): give the
event ``group_by: [OrderColumn]`` and the rows of one order (those that pass
``when``) make one event; each field takes the group's ``first`` row's value
unless it says ``aggregate: sum`` (or ``min``, ``max``, ``last``, ``count``:
the number of rows). Without it, rows that make an event id made before are
rejected as duplicates (with the reason), never applied twice or dropped
silently.

**Timestamps** without ``format`` are read as ISO 8601 (a date alone is
midnight), in ``source.timezone`` when they carry no offset. A column of
numbers needs a ``format``: ``%Y%m%d`` for ``20110105``, ``epoch`` for Unix
seconds (or ``epoch_ms``); numbers without one are refused with a hint, never
read as seconds since 1970 by accident. Empty cells, and Parquet's nulls,
are missing values.

Rows that do not map to a valid event are reported with the reason, never
silently dropped (:mod:`producers.loading` loads an export by its mapping).
Quote column names that YAML would read as something else (``no``, ``yes``,
``on``, ``off``, numbers): ``{column: "no"}``.
Whitespace-separated files: ``source: {read: {sep: '\\s+'}}`` (single quotes
in YAML, so the backslash stays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from churnwatch.pipeline.events import TOPIC_OF_TYPE


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
    aggregate: Literal["first", "last", "sum", "min", "max", "count"] = "first"

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
    group_by: list[str] = []
    fields: dict[str, FieldSpec]

    @model_validator(mode="before")
    @classmethod
    def _one_column_group(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("group_by"), str):
            return {**data, "group_by": [data["group_by"]]}
        return data

    @model_validator(mode="after")
    def _known_type(self) -> EventSpec:
        if self.type not in TOPIC_OF_TYPE:
            raise ValueError(f"unknown event type {self.type!r}; one of {sorted(TOPIC_OF_TYPE)}")
        if not self.group_by:
            for name, spec in self.fields.items():
                if spec.aggregate != "first":
                    raise ValueError(f"fields.{name}: aggregate {spec.aggregate} needs group_by")
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
            frame = pd.read_parquet(p, **source.read)
            # Text as a CSV would give it: nulls empty, dates without a time part as dates.
            return frame.apply(_parquet_text)
        return pd.read_csv(p, dtype=str, keep_default_na=False, **source.read)
    except FileNotFoundError as exc:
        raise MappingError(f"export file not found: {p}") from exc
    except (ValueError, TypeError, OSError) as exc:
        # a file of another format, a bad encoding, or a bad `source.read` option
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MappingError(
            f"cannot read {p} as {kind} (source.format / source.read): {reason}"
        ) from exc


def _parquet_text(column: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(column):
        moments = column.dropna()
        no_time = bool(len(moments)) and bool((moments == moments.dt.normalize()).all())
        text = column.dt.strftime("%Y-%m-%d" if no_time else "%Y-%m-%dT%H:%M:%S.%f%z")
    else:
        text = column.astype(str)
    return text.where(column.notna(), "")
