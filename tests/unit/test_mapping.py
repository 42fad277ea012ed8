from __future__ import annotations

from pathlib import Path

import pytest

from churnwatch.producers.loading import load_events
from churnwatch.producers.mapping import MappingError, load_mapping
from tests.paths import REPO

DATA = REPO.parent / "shared" / "data"
MAPPINGS = REPO / "configs" / "mappings"

ORDERS_MAPPING = """
source: {timezone: Europe/Berlin}
events:
  - type: order_placed
    when: [{column: status, not_equals: cancelled}]
    fields:
      event_id: {template: "o-{num}"}
      customer_id: {column: cust, integer_text: true}
      occurred_at: {column: date, format: "%d.%m.%Y"}
      order_id: {column: num}
      amount: {column: total}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_new_export_needs_only_a_mapping_file(tmp_path):
    csv = write(
        tmp_path,
        "orders.csv",
        "cust,num,date,total,status\n"
        "17.0,A1,02.01.2025,100.5,ok\n"
        "17.0,A2,01.01.2025,99,ok\n"
        "18,A3,03.01.2025,5,cancelled\n"
        "19,A4,03.01.2025,-3,ok\n",
    )
    events, rejected = load_events(csv, write(tmp_path, "m.yaml", ORDERS_MAPPING))
    assert [e.order_id for e in events] == ["A2", "A1"]  # sorted by event time
    assert events[0].customer_id == "17"
    assert events[0].occurred_at.utcoffset().total_seconds() == 3600  # Berlin in winter
    (bad,) = rejected
    assert bad.row_number == 4
    assert "amount" in bad.error


def test_mapping_errors_name_the_place(tmp_path):
    bad = write(tmp_path, "m.yaml", ORDERS_MAPPING.replace("order_placed", "order_made"))
    with pytest.raises(MappingError, match="unknown event type 'order_made'"):
        load_mapping(bad)
    csv = write(tmp_path, "o.csv", "cust,number,date,total,status\n1,A,01.01.2025,1,ok\n")
    with pytest.raises(MappingError, match=r"fields.order_id: column 'num' not in the file"):
        load_events(csv, write(tmp_path, "ok.yaml", ORDERS_MAPPING))


def test_an_unreadable_export_is_a_clear_error_not_a_traceback(tmp_path):
    import gzip

    from click.testing import CliRunner

    from churnwatch.cli import cli

    mapping = write(tmp_path, "ok.yaml", ORDERS_MAPPING)
    not_parquet = write(tmp_path, "o.parquet", "cust,number\n1,A\n")
    with pytest.raises(MappingError, match=r"cannot read .*o.parquet as parquet"):
        load_events(not_parquet, mapping)
    binary = tmp_path / "o.csv"
    binary.write_bytes(gzip.compress(bytes(range(256)) * 50))  # compressed, wrong suffix
    with pytest.raises(MappingError, match=r"cannot read .*o.csv as csv"):
        load_events(binary, mapping)
    bad_option = write(
        tmp_path,
        "opt.yaml",
        ORDERS_MAPPING.replace("timezone: Europe/Berlin", "read: {no_such_option: 1}"),
    )
    with pytest.raises(MappingError, match="source.read"):
        load_events(write(tmp_path, "p.csv", "cust\n1\n"), bad_option)
    result = CliRunner().invoke(
        cli,
        ["backtest", "--events", str(binary), "--mapping", str(mapping), "--out", str(tmp_path)],
    )
    assert result.exit_code == 2 and "cannot read" in result.output
    assert "Traceback" not in result.output


needs_data = pytest.mark.skipif(
    not DATA.exists(), reason="../shared/data is absent (CI always has it)"
)


@needs_data
def test_online_retail_mapping_reads_every_invoice():
    events, rejected = load_events(
        DATA / "online_retail" / "invoices.csv.gz", MAPPINGS / "online_retail.yaml"
    )
    kinds = {t: sum(e.type == t for e in events) for t in {e.type for e in events}}
    # 22,190 invoices, 3,654 of them cancellations (per the data README)
    assert kinds["order_placed"] + len(rejected) == 22_190 - 3_654
    assert kinds["complaint_opened"] == kinds["complaint_resolved"] == 3_654
    assert len({e.customer_id for e in events}) == 4_372


@needs_data
def test_accounts_receivable_mapping_reads_invoices_payments_and_disputes():
    events, rejected = load_events(
        DATA / "accounts_receivable" / "accounts_receivable.csv",
        MAPPINGS / "accounts_receivable.yaml",
    )
    assert rejected == []
    kinds = {t: sum(e.type == t for e in events) for t in {e.type for e in events}}
    assert kinds["invoice_issued"] == 2_466
    assert kinds["complaint_opened"] == 561
    assert len({e.customer_id for e in events}) == 100


LINES_MAPPING = """
events:
  - type: order_placed
    when: [{column: invoice, not_startswith: "C"}]
    group_by: invoice
    fields:
      event_id: {template: "o-{invoice}"}
      customer_id: {column: cust}
      occurred_at: {column: at}
      order_id: {column: invoice}
      amount: {column: line_total, aggregate: sum}
"""

LINES = (
    "invoice,cust,at,line_total\n"
    "536365,17850,2010-12-01 08:26:00,15.30\n"
    "536365,17850,2010-12-01 08:26:00,20.34\n"
    "536366,13047,2010-12-01 08:28:00,11.10\n"
    "536365,17850,2010-12-01 08:27:00,22.00\n"
    "C536379,17850,2010-12-01 09:41:00,-27.50\n"
)


def test_order_lines_are_grouped_into_one_order_each(tmp_path):
    from churnwatch.producers.loading import load_export

    loaded = load_export(write(tmp_path, "l.csv", LINES), write(tmp_path, "m.yaml", LINES_MAPPING))
    assert loaded.rejected == []
    by_order = {e.order_id: e for e in loaded.events}
    assert sorted(by_order) == ["536365", "536366"]
    assert by_order["536365"].amount == pytest.approx(57.64)  # three lines summed
    assert by_order["536365"].occurred_at.minute == 26  # the first line's time
    summary = loaded.summary()
    assert "5 rows read, 2 events made for 2 customers" in summary
    assert "order_placed: 2" in summary


def test_lines_without_group_by_are_refused_as_duplicates_not_dropped(tmp_path):
    from churnwatch.producers.loading import load_export

    ungrouped = LINES_MAPPING.replace("    group_by: invoice\n", "").replace(", aggregate: sum", "")
    loaded = load_export(write(tmp_path, "l.csv", LINES), write(tmp_path, "m.yaml", ungrouped))
    assert len(loaded.events) == 2
    assert [r.row_number for r in loaded.rejected] == [2, 4]
    assert "duplicate event id 'o-536365' (row 1 made it)" in loaded.rejected[0].error
    assert "group_by" in loaded.summary()
    # identical rows that are distinct events: the row number makes the ids distinct
    by_row = ungrouped.replace('"o-{invoice}"', '"o-{invoice}-{_row}"')
    loaded = load_export(write(tmp_path, "l.csv", LINES), write(tmp_path, "r.yaml", by_row))
    assert len(loaded.events) == 4 and loaded.rejected == []


def test_aggregates_need_group_by(tmp_path):
    bad = LINES_MAPPING.replace("    group_by: invoice\n", "")
    with pytest.raises(MappingError, match="aggregate sum needs group_by"):
        load_mapping(write(tmp_path, "m.yaml", bad))


def test_number_dates_need_a_format_and_say_so(tmp_path):
    from churnwatch.producers.loading import load_export

    mapping = ORDERS_MAPPING.replace(', format: "%d.%m.%Y"', "")
    csv = write(
        tmp_path,
        "o.csv",
        "cust,num,date,total,status\n1,A1,20110105,10,ok\n1,A2,1294185600,10,ok\n"
        "1,A3,2011-01-05,10,ok\n1,A4,,10,ok\n",
    )
    loaded = load_export(csv, write(tmp_path, "m.yaml", mapping))
    (iso,) = loaded.events
    assert iso.occurred_at.isoformat() == "2011-01-05T00:00:00+01:00"  # a date: midnight, Berlin
    errors = {r.row_number: r.error for r in loaded.rejected}
    assert "'20110105' is a number, not a date" in errors[1] and "%Y%m%d" in errors[1]
    assert "epoch" in errors[2]
    assert "occurred_at" in errors[4]  # missing
    dated = load_export(
        csv,
        write(
            tmp_path, "d.yaml", mapping.replace("column: date}", 'column: date, format: "%Y%m%d"}')
        ),
    )
    assert [e.order_id for e in dated.events] == ["A1"]
    epoch = load_export(
        csv,
        write(tmp_path, "e.yaml", mapping.replace("column: date}", "column: date, format: epoch}")),
    )
    assert [e.occurred_at.isoformat() for e in epoch.events] == ["2011-01-05T00:00:00+00:00"]


def test_parquet_dates_and_nulls_read_as_dates_and_missing_values(tmp_path):
    import pandas as pd

    from churnwatch.producers.loading import load_export

    frame = pd.DataFrame(
        {
            "cust": ["1", "2", None],
            "num": ["A1", "A2", "A3"],
            "date": pd.to_datetime(["2025-01-02", None, "2025-01-03"]),
            "total": [10.0, 5.0, 7.0],
            "status": ["ok", "ok", "ok"],
        }
    )
    frame.to_parquet(tmp_path / "o.parquet")
    mapping = ORDERS_MAPPING.replace(', format: "%d.%m.%Y"', "")
    loaded = load_export(tmp_path / "o.parquet", write(tmp_path, "m.yaml", mapping))
    (event,) = loaded.events
    assert event.occurred_at.isoformat() == "2025-01-02T00:00:00+01:00"
    errors = {r.row_number: r.error for r in loaded.rejected}
    assert "occurred_at" in errors[2] and "nan" not in errors[2].lower()
    assert "customer_id" in errors[3]


def test_whitespace_separated_files_read_with_the_documented_option(tmp_path):
    mapping = ORDERS_MAPPING.replace(
        "source: {timezone: Europe/Berlin}", "source: {timezone: UTC, read: {sep: '\\s+'}}"
    )
    csv = write(
        tmp_path, "o.txt", "cust  num date       total status\n7   B1  02.01.2025 3.5  ok\n"
    )
    events, rejected = load_events(csv, write(tmp_path, "m.yaml", mapping))
    assert rejected == [] and events[0].amount == 3.5


def test_several_exports_load_together_each_with_its_mapping(tmp_path):
    """Orders from one table, marketing contacts from another, in one backtest."""
    from click.testing import CliRunner

    from churnwatch.cli import cli

    orders = write(
        tmp_path,
        "orders.csv",
        "cust,num,date,total,status\n"
        + "".join(f"7,A{w},{1 + w % 28:02d}.{1 + w // 28:02d}.2025,10,ok\n" for w in range(40)),
    )
    contacts = write(
        tmp_path,
        "campaigns.csv",
        "customer,sent,campaign\n7,2025-01-15,spring\n7,2025-02-20,summer\n8,2025-02-21,summer\n",
    )
    contact_mapping = write(
        tmp_path,
        "contacts.yaml",
        """
events:
  - type: contact
    fields:
      event_id: {template: "mail-{campaign}-{customer}"}
      customer_id: {column: customer}
      occurred_at: {column: sent}
      channel: {value: campaign}
      direction: {value: outbound}
""",
    )
    args = ["backtest", "--no-model", "--out", str(tmp_path / "out")]
    args += ["--events", str(orders), "--mapping", str(write(tmp_path, "o.yaml", ORDERS_MAPPING))]
    args += ["--events", str(contacts), "--mapping", str(contact_mapping)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "orders.csv: 40 rows read, 40 events made" in result.output
    assert "campaigns.csv: 3 rows read, 3 events made for 2 customers" in result.output
    assert "together: 43 events" in result.output
    # a mapping for each export, or one for all; not two for three
    bad = CliRunner().invoke(cli, [*args, "--events", str(orders)])
    assert bad.exit_code == 2 and "give one mapping per export" in bad.output
