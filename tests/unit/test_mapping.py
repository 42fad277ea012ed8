from __future__ import annotations

from pathlib import Path

import pytest

from churnwatch.settings import PROJECT_ROOT
from producers.mapping import MappingError, load_events, load_mapping

DATA = PROJECT_ROOT.parent / "shared" / "data"
MAPPINGS = PROJECT_ROOT / "configs" / "mappings"

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
