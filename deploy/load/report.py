"""The verdict of a load run against the seed's bar, and its HTML report with plots.

The seed's bar: p95 answer < 2 s at 2x traffic; queue wait median < 300 ms and p95 < 2 s;
nothing lost. Ours on top: every request answered exactly once, every side effect once.
Figures come from the answers read back from the topics (``counts``), never from the
client's own bookkeeping, so the report judges what the stack did.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clawstream.deploy.load.counts import DOUBLED, DUPLICATE_EFFECTS, LOST, Record
from clawstream.deploy.load.plan import Phase
from clawstream.deploy.load.run import Outcome

P95_ANSWER_S = 2.0
QUEUE_MEDIAN_MS = 300.0
QUEUE_P95_MS = 2000.0
WINDOW_S = 5.0


@dataclass(frozen=True)
class Row:
    """One line of the verdict table."""

    figure: str
    value: str
    bar: str
    passed: bool | None  # None: a figure without a bar


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def peak_phases(phases: list[Phase]) -> set[str]:
    """The phases at the profile's highest rate (2x the average in the seed's profiles):
    the p95 bar is judged on their requests."""
    top = max((p.rate for p in phases), default=0.0)
    return {p.name for p in phases if p.rate >= 0.95 * top}


def _first(out: Outcome) -> list[Record]:
    return [v[0] for v in out.answers.values()]


def latency_s(answer: Record) -> float:
    return float(answer["answered_at_ms"] - answer["created_at_ms"]) / 1000


def queue_waits_ms(answers: list[Record]) -> list[float]:
    return [float(e["queue_wait_ms"]) for a in answers for e in a["timeline"]]


def summary(out: Outcome, phases: list[Phase]) -> dict[str, Any]:
    """Every figure of the verdict, as numbers (the report and the tests read this)."""
    firsts = _first(out)
    peak = peak_phases(phases)
    at_peak = [latency_s(a) for a in firsts if out.phase_of.get(a["request_id"]) in peak]
    waits = queue_waits_ms(firsts)
    reasons = Counter(f"{a['status']}: {a['reason_kind'] or '-'}" for a in firsts)
    return {
        "sent": len(out.sent),
        "unacknowledged": out.unacked,
        "answered": len(out.answers),
        "answered_once": sum(len(v) == 1 for v in out.answers.values()),
        "lost": out.counts[LOST],
        "doubled": out.counts[DOUBLED],
        "duplicate_effects": out.counts[DUPLICATE_EFFECTS],
        "effects_counted": len(out.effects),
        "dead_letters": len(out.letters),
        "statuses": dict(Counter(a["status"] for a in firsts)),
        "statuses_by_reason": dict(reasons.most_common()),
        "peak_phases": sorted(peak),
        "p95_answer_at_peak_s": pct(at_peak, 0.95),
        "p50_answer_s": pct([latency_s(a) for a in firsts], 0.5),
        "queue_wait_median_ms": pct(waits, 0.5),
        "queue_wait_p95_ms": pct(waits, 0.95),
        "faults": [f"{at:g}s {what}" for at, what in out.faults_done],
        "late_sends": out.late_sends,
    }


def verdict(s: dict[str, Any]) -> list[Row]:
    def under(value: float | None, bar: float) -> bool | None:
        return None if value is None else value < bar

    def fmt(value: float | None, unit: str) -> str:
        return "-" if value is None else f"{value:.3g} {unit}"

    return [
        Row("requests sent / answered exactly once", f"{s['sent']} / {s['answered_once']}",
            "all", s["answered_once"] == s["sent"]),
        Row("lost", str(s["lost"]), "0", s["lost"] == 0),
        Row("answered twice", str(s["doubled"]), "0", s["doubled"] == 0),
        Row("duplicate side effects", str(s["duplicate_effects"]), "0",
            s["duplicate_effects"] == 0),
        Row(f"p95 answer at 2x traffic ({', '.join(s['peak_phases'])})",
            fmt(s["p95_answer_at_peak_s"], "s"), f"< {P95_ANSWER_S:g} s",
            under(s["p95_answer_at_peak_s"], P95_ANSWER_S)),
        Row("queue wait median", fmt(s["queue_wait_median_ms"], "ms"),
            f"< {QUEUE_MEDIAN_MS:g} ms", under(s["queue_wait_median_ms"], QUEUE_MEDIAN_MS)),
        Row("queue wait p95", fmt(s["queue_wait_p95_ms"], "ms"), f"< {QUEUE_P95_MS:g} ms",
            under(s["queue_wait_p95_ms"], QUEUE_P95_MS)),
        Row("dead letters", str(s["dead_letters"]), "", None),
    ]


def nothing_lost(s: dict[str, Any]) -> bool:
    return s["lost"] == 0 and s["doubled"] == 0 and s["duplicate_effects"] == 0


def series(out: Outcome) -> dict[str, list[tuple[float, float]]]:
    """Per window of ``WINDOW_S`` by answer time (s from start): the plotted figures."""
    windows: dict[int, list[Record]] = {}
    for a in _first(out):
        w = int((a["answered_at_ms"] - out.started_ms) / 1000 // WINDOW_S)
        windows.setdefault(max(0, w), []).append(a)
    result: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("answers/s", "p50 s", "p95 s", "p99 s", "queue wait p50 ms",
                        "queue wait p95 ms", "cache hit rate", "cost per interaction $")}
    for w in sorted(windows):
        batch, t = windows[w], (w + 0.5) * WINDOW_S
        lat = [latency_s(a) for a in batch]
        waits = queue_waits_ms(batch)
        steps = [e for a in batch for e in a["timeline"]]
        result["answers/s"].append((t, len(batch) / WINDOW_S))
        for q, name in ((0.5, "p50 s"), (0.95, "p95 s"), (0.99, "p99 s")):
            result[name].append((t, pct(lat, q) or 0.0))
        if waits:
            result["queue wait p50 ms"].append((t, pct(waits, 0.5) or 0.0))
            result["queue wait p95 ms"].append((t, pct(waits, 0.95) or 0.0))
        if steps:
            result["cache hit rate"].append((t, sum(e["cache_hit"] for e in steps) / len(steps)))
        result["cost per interaction $"].append(
            (t, sum(a["usage"]["cost_usd"] for a in batch) / len(batch)))
    letters = sorted((r["at_ms"] - out.started_ms) / 1000 for r in out.letters)
    result["dead letters (total)"] = [(t, float(i + 1)) for i, t in enumerate(letters)]
    result["consumer lag"] = [(s.at_s, float(s.lag)) for s in out.samples if s.lag is not None]
    result["in flight (sent - answered)"] = [(s.at_s, float(s.sent - s.answered))
                                              for s in out.samples]
    return result


PLOTS = {
    "answers.png": ("answers per second", ["answers/s"]),
    "latency.png": ("answer latency (created -> answered), s", ["p50 s", "p95 s", "p99 s"]),
    "queue_wait.png": ("queue wait per step, ms", ["queue wait p50 ms", "queue wait p95 ms"]),
    "backlog.png": ("consumer lag and requests in flight",
                    ["consumer lag", "in flight (sent - answered)"]),
    "dlq.png": ("dead letters", ["dead letters (total)"]),
    "cache.png": ("cache hit rate (steps)", ["cache hit rate"]),
    "cost.png": ("cost per interaction, $", ["cost per interaction $"]),
}


def write(out: Outcome, phases: list[Phase], directory: Path) -> dict[str, Any]:
    """Write ``report.html``, its PNG plots and ``verdict.json`` under ``directory``;
    returns the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    s = summary(out, phases)
    rows = verdict(s)
    data = series(out)
    for file, (title, names) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 3))
        for name in names:
            points = data[name]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name, marker=".",
                    drawstyle="steps-post" if "total" in name else "default")
        for at, what in out.faults_done:
            ax.axvline(at, color="red", alpha=0.3, linestyle="--")
            ax.annotate(what, (at, 0), fontsize=6, color="red", rotation=90)
        ax.set_title(title)
        ax.set_xlabel("s from start")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(directory / file, dpi=80)
        plt.close(fig)
    (directory / "verdict.json").write_text(json.dumps(
        {"summary": s, "verdict": [asdict(r) for r in rows],
         "phases": [asdict(p) for p in phases]}, indent=2))
    (directory / "report.html").write_text(_html(s, rows, phases))
    return s


def _html(s: dict[str, Any], rows: list[Row], phases: list[Phase]) -> str:
    def mark(passed: bool | None) -> str:
        return {True: "pass", False: "FAIL", None: ""}[passed]

    table = "".join(f"<tr class='{mark(r.passed)}'><td>{html.escape(r.figure)}</td>"
                    f"<td>{html.escape(r.value)}</td><td>{html.escape(r.bar)}</td>"
                    f"<td>{mark(r.passed)}</td></tr>" for r in rows)
    reasons = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
                      for k, v in s["statuses_by_reason"].items())
    profile = ", ".join(f"{p.name} {p.rate:g}/s for {p.seconds:g} s" for p in phases)
    plots = "".join(f"<img src='{f}' alt='{html.escape(t)}'>" for f, (t, _) in PLOTS.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>clawstream load</title>
<style>body{{font-family:sans-serif}} td{{padding:2px 8px}} .FAIL{{color:#b00}}
.pass{{color:#070}} img{{display:block;margin:8px 0}}</style></head><body>
<h1>clawstream load</h1><p>{html.escape(profile)}; faults: {html.escape(
        ", ".join(s["faults"]) or "none")}; {s["late_sends"]} sends late.</p>
<h2>Verdict</h2><table><tr><th>figure</th><th>value</th><th>bar</th><th></th></tr>{table}
</table><h2>Statuses by reason</h2><table>{reasons}</table><h2>Over time</h2>{plots}
</body></html>
"""
