"""`riskstream report`: PNG plots of a run's outputs, the data behind each as CSV, and an
index.html showing them with the headline figures. The tables come from udfs/report_tables.py;
this module only reads the outputs and draws."""

from __future__ import annotations

import csv
import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from udfs.report_tables import (
    Table,
    amount_distribution,
    dead_letters_by_stage,
    fraud_rate_by_category,
    headline,
    learning_curve,
    records_per_minute,
    report_window_ms,
    score_distribution,
)

# Every plot is a PNG of this many pixels.
PLOT_WIDTH_PX, PLOT_HEIGHT_PX = 960, 480
_DPI = 96


class Plot(NamedTuple):
    """One plot of the report: its file stem, title, table and drawing function."""

    name: str
    title: str
    table: Table
    draw: Callable[[Any, Table], None]


def build_report(scores: Sequence[dict[str, Any]], letters: Sequence[dict[str, Any]], to: Path) -> Path:
    """Writes the report of a run's scores and dead letters (output lines as dicts) into `to`
    (created if needed): <plot>.png and <plot>.csv for each plot, and index.html. Returns the
    path of index.html."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    to.mkdir(parents=True, exist_ok=True)
    window_ms = report_window_ms(s["event_time"] for s in scores)
    window = _duration(window_ms)
    plots = [
        Plot("learning_curve", f"Prequential log loss and ROC AUC per {window} of event time",
             learning_curve(scores, window_ms), _draw_learning_curve),
        Plot("fraud_rate_by_category", f"Fraud rate per merchant category, per {window} of event time",
             fraud_rate_by_category(scores, window_ms), _draw_fraud_rates),
        Plot("amount_distribution", "Amounts of labelled transactions, fraud and not",
             amount_distribution(scores), _draw_amounts),
        Plot("score_distribution", "Scores of labelled transactions, fraud and not",
             score_distribution(scores), _draw_scores),
        Plot("records_per_minute", "Scored records per minute of event time", records_per_minute(scores),
             _draw_records_per_minute),
        Plot("dead_letters_by_stage", "Dead letters by stage", dead_letters_by_stage(letters), _draw_dead_letters),
    ]
    for plot in plots:
        with (to / f"{plot.name}.csv").open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(plot.table.header)
            writer.writerows(("" if value is None else value for value in row) for row in plot.table.rows)
        figure, axes = plt.subplots(figsize=(PLOT_WIDTH_PX / _DPI, PLOT_HEIGHT_PX / _DPI), dpi=_DPI)
        axes.set_title(plot.title)
        if plot.table.rows:
            plot.draw(axes, plot.table)
        else:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        figure.tight_layout()
        figure.savefig(to / f"{plot.name}.png", dpi=_DPI)
        plt.close(figure)
    index = to / "index.html"
    index.write_text(_index_html(headline(scores, letters), plots), encoding="utf-8")
    return index


def _duration(ms: int) -> str:
    for unit, size in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000)):
        if ms % size == 0:
            count = ms // size
            return f"{unit}" if count == 1 else f"{count} {unit}s"
    return f"{ms} ms"


def _times(starts: Sequence[int]) -> list[datetime]:
    return [datetime.fromtimestamp(start / 1000, timezone.utc) for start in starts]


def _draw_learning_curve(axes, table: Table) -> None:
    loss_axes = axes
    auc_axes = axes.twinx()
    for key in dict.fromkeys(row[0] for row in table.rows):
        rows = [row for row in table.rows if row[0] == key]
        width = 2.0 if key == "(all)" else 0.8
        loss_axes.plot(_times([r[1] for r in rows]), [math.nan if r[3] is None else r[3] for r in rows],
                       linewidth=width, label=f"log loss {key}")
        auc_axes.plot(_times([r[1] for r in rows]), [math.nan if r[4] is None else r[4] for r in rows],
                      linewidth=width, linestyle="--", label=f"AUC {key}")
    loss_axes.set_ylabel("log loss (nats)")
    auc_axes.set_ylabel("ROC AUC")
    auc_axes.set_ylim(0, 1)
    loss_axes.legend(loc="upper left", fontsize="x-small")
    auc_axes.legend(loc="upper right", fontsize="x-small")


def _draw_fraud_rates(axes, table: Table) -> None:
    for category in sorted({row[0] for row in table.rows}):
        rows = [row for row in table.rows if row[0] == category]
        axes.plot(_times([r[1] for r in rows]), [r[4] for r in rows], linewidth=0.9, label=category)
    axes.set_ylabel("fraud rate")
    axes.legend(loc="upper left", fontsize="xx-small", ncol=4)


def _draw_amounts(axes, table: Table) -> None:
    lows = [max(row[0], 0.001) for row in table.rows]
    widths = [row[1] - low for row, low in zip(table.rows, lows)]
    axes.bar(lows, [row[2] for row in table.rows], width=widths, align="edge", alpha=0.6, label="not fraud")
    axes.bar(lows, [row[3] for row in table.rows], width=widths, align="edge", alpha=0.6, label="fraud")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("amount")
    axes.set_ylabel("transactions")
    axes.legend()


def _draw_scores(axes, table: Table) -> None:
    lows = [row[0] for row in table.rows]
    width = table.rows[0][1] - table.rows[0][0]
    axes.bar(lows, [row[2] for row in table.rows], width=width, align="edge", alpha=0.6, label="not fraud")
    axes.bar(lows, [row[3] for row in table.rows], width=width, align="edge", alpha=0.6, label="fraud")
    axes.set_yscale("log")
    axes.set_xlabel("score (probability of fraud before learning)")
    axes.set_ylabel("transactions")
    axes.legend()


def _draw_records_per_minute(axes, table: Table) -> None:
    axes.plot(_times([row[0] for row in table.rows]), [row[1] for row in table.rows], linewidth=0.8)
    axes.set_ylabel("records")


def _draw_dead_letters(axes, table: Table) -> None:
    axes.bar([row[0] for row in table.rows], [row[1] for row in table.rows])
    axes.set_ylabel("dead letters")


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _index_html(figures: dict[str, Any], plots: Sequence[Plot]) -> str:
    def time_of(ms: int | None) -> str:
        return "n/a" if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")

    shown = {name: time_of(value) if name.endswith("event time") else _format(value)
             for name, value in figures.items()}
    rows = "\n".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
                     for name, value in shown.items())
    sections = "\n".join(
        f'<h2>{html.escape(plot.title)}</h2>\n<img src="{plot.name}.png" width="{PLOT_WIDTH_PX}" '
        f'height="{PLOT_HEIGHT_PX}" alt="{html.escape(plot.title)}">\n'
        f'<p><a href="{plot.name}.csv">{plot.name}.csv</a> (the data behind the plot)</p>' for plot in plots)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Riskstream run report</title>
<style>body {{ font-family: sans-serif; margin: 2em; }} th {{ text-align: left; padding-right: 2em; }}</style>
</head>
<body>
<h1>Riskstream run report</h1>
<table>
{rows}
</table>
{sections}
</body>
</html>
"""
