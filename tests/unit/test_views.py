"""The Grafana dashboard under deploy/ imports as is; it and ``clawstream top`` ask only
for metrics we export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console

from clawstream import metrics
from clawstream.cli.top import figures, render

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "clawstream.json"
SERIES = re.compile(r"\b(?:ray_)?clawstream_[a-z_]+\b")


def _exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def test_every_metric_the_dashboard_names_is_one_we_export() -> None:
    named = {name for expr in _exprs() for name in SERIES.findall(expr)}
    assert named and named <= metrics.NAMES, sorted(named - metrics.NAMES)
    assert all(SERIES.search(expr) for expr in _exprs())  # no panel asks for nothing of ours


def test_top_asks_only_for_metrics_we_export_and_formats_its_units() -> None:
    named = {name for fig in figures("5m") for name in SERIES.findall(fig.promql)}
    assert named and named <= metrics.NAMES, sorted(named - metrics.NAMES)
    console = Console(width=120, record=True)
    console.print(render([("request latency p95", "", 0.25), ("cost since start", "acme", 0.0123),
                          ("request latency p99", "", 2.5)], "5m", "here"))
    text = console.export_text()
    assert "250.0 ms" in text and "$0.012300" in text and "2.50 s" in text and "acme" in text


def test_it_imports_as_is() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and "id" not in board  # Grafana assigns the id
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


def test_top_says_when_prometheus_does_not_answer() -> None:
    from typer.testing import CliRunner

    from clawstream.cli.app import app
    from clawstream.deploy.local.ports import free_port

    result = CliRunner().invoke(app, ["top", "--once", "--url",
                                      f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "did not answer" in result.output
