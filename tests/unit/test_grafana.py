"""Grafana provisioning: the files Grafana reads at start, checked for what it requires."""

from __future__ import annotations

import json
import re

import yaml

from churnwatch.pipeline import metrics
from tests.paths import REPO

GRAFANA = REPO / "configs" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "churnwatch.json"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def exported_names() -> set[str]:
    names = set()
    families = [f for r in (metrics.WORKER, metrics.ALERTS, metrics.ARCHIVE) for f in r.collect()]
    for family in families:
        for sample in family.samples:
            names.add(sample.name)
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
            "info": ["_info"],
        }.get(family.type, [""])
        names.update(family.name + s for s in suffixes)
    return names


def test_datasource_has_the_uid_the_panels_use():
    provisioning = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert provisioning["apiVersion"] == 1
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}
            assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])


def test_dashboard_provider_points_at_a_folder():
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/churnwatch.yml").read_text())
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"].startswith("/")


def test_dashboard_has_the_fields_grafana_requires():
    d = dashboard()
    for key, kind in [("uid", str), ("title", str), ("schemaVersion", int), ("panels", list)]:
        assert isinstance(d[key], kind), key
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"])
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows == ["Pipeline health", "Business"]
    occupied: set[tuple[int, int]] = set()
    for p in d["panels"]:
        assert p["type"] in {"row", "timeseries", "stat", "bargauge"}, p["type"]
        assert p["title"]
        grid = p["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"} and grid["x"] + grid["w"] <= 24
        cells = {
            (grid["y"] + dy, grid["x"] + dx) for dy in range(grid["h"]) for dx in range(grid["w"])
        }
        assert not cells & occupied, f"{p['title']} overlaps another panel"
        occupied |= cells
        if p["type"] != "row":
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs)) and all(t["expr"] for t in p["targets"])


def test_every_query_uses_metrics_that_exist():
    exported = exported_names()
    for expr in queries():
        for name in re.findall(r"\bchurnwatch_[a-z0-9_]+", expr):
            assert name in exported, f"{name} (in {expr}) is not a churnwatch metric"
