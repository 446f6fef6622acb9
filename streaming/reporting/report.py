"""`riskstream report`: PNG plots of a run's outputs, the data behind each as CSV, and an
index.html showing them under the run's settings and headline figures. The tables come from
udfs/report_tables.py; this module only reads the outputs and draws."""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from streaming.reporting.outputs import committed_lines, read_run_record
from udfs.report_tables import (
    OTHER,
    Table,
    amount_distribution,
    analytics_amounts,
    analytics_by_group,
    dead_letters_by_stage,
    drift_events_per_window,
    fraud_rate_by_category,
    headline,
    label_delays,
    label_outcomes,
    late_records,
    learning_curve,
    records_per_minute,
    report_window_ms,
    score_distribution,
)

# Every plot is a PNG this wide, and this high per row of panels (at least one row's height).
PLOT_WIDTH_PX, PLOT_HEIGHT_PX = 960, 480
PANEL_HEIGHT_PX = 300
# Small multiples (one panel per currency) draw at most this many panels; the CSV holds the rest.
MAX_PANELS = 4
_DPI = 96


@dataclass
class RunData:
    """What the report draws: a run's output lines as dicts, None for an output the run did not
    write (analytics off, labels inline, no drift detector), and its run record (None: not recorded)."""

    scores: list[dict[str, Any]]
    letters: list[dict[str, Any]]
    analytics: list[dict[str, Any]] | None = None
    late: list[dict[str, Any]] | None = None
    learning: list[dict[str, Any]] | None = None
    label_letters: list[dict[str, Any]] | None = None
    drift_events: list[dict[str, Any]] | None = None
    run_record: dict[str, Any] | None = None


def read_output_folder(folder: Path) -> RunData:
    """The committed outputs and run record of a file-output run under `folder` (its output.path)."""
    def lines(name: str) -> list[dict[str, Any]] | None:
        return list(committed_lines(folder / name)) if (folder / name).is_dir() else None

    return RunData(scores=lines("scores") or [], letters=lines("dead-letters") or [], analytics=lines("analytics"),
                   late=lines("late"), learning=lines("learning"), label_letters=lines("label-dead-letters"),
                   drift_events=lines("drift"), run_record=read_run_record(folder))


class Plot(NamedTuple):
    """One plot of the report: its file stem, title, table, drawing function (figure, table) and
    how many rows of panels it has."""

    name: str
    title: str
    table: Table
    draw: Callable[[Any, Table], None]
    rows: int = 1

    @property
    def height_px(self) -> int:
        return max(PLOT_HEIGHT_PX, PANEL_HEIGHT_PX * self.rows)


def build_report(run: RunData, to: Path, drift_at: int | None = None) -> Path:
    """Writes the report of a run into `to` (created if needed): <plot>.png and <plot>.csv for each
    plot, and index.html. `drift_at` (epoch ms): where the input's drift is known to start (the
    generator's), marked on every event-time axis. Returns the path of index.html."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    to.mkdir(parents=True, exist_ok=True)
    scores, letters = run.scores, run.letters
    window_ms = report_window_ms(s["event_time"] for s in scores)
    window = _duration(window_ms)

    def over_time(draw: Callable[[Any, Table], None]) -> Callable[[Any, Table], None]:
        def drawn(figure, table: Table) -> None:
            draw(figure, table)
            for axes in figure.axes:
                if axes.get_label() != "twin":
                    _event_time_axis(axes, drift_at)
        return drawn

    plots = [
        Plot("learning_curve", f"Prequential log loss and ROC AUC per {window} of event time",
             learning_curve(scores, window_ms), over_time(_draw_learning_curve)),
        Plot("fraud_rate_by_category", f"Fraud rate per merchant category, per {window} of event time",
             fraud_rate_by_category(scores, window_ms), over_time(_draw_fraud_rates)),
        Plot("amount_distribution", "Amounts of labelled transactions, fraud and not, per currency",
             amount_distribution(scores), _draw_amounts),
        Plot("score_distribution", "Scores of labelled transactions, fraud and not",
             score_distribution(scores), _draw_scores),
        Plot("records_per_minute", "Scored records per minute of event time", records_per_minute(scores),
             over_time(_draw_records_per_minute)),
        Plot("dead_letters_by_stage", "Dead letters by stage", dead_letters_by_stage(letters), _draw_dead_letters),
    ]
    if run.analytics is not None:
        groups = analytics_by_group(run.analytics)
        plots += [
            Plot("analytics_by_group", "Windowed analytics: transactions and fraud rate per window and group",
                 groups, over_time(_draw_analytics_groups), rows=max(1, len({row[0] for row in groups.rows}))),
            Plot("analytics_amounts", "Windowed analytics: amounts per window, each currency apart",
                 analytics_amounts(run.analytics), over_time(_draw_analytics_amounts))]
    if run.late is not None:
        plots.append(Plot("late_records", f"Late records per {window} of event time, by the window they missed",
                          late_records(run.late, window_ms), over_time(_draw_late)))
    if run.learning is not None or run.label_letters is not None:  # a sink writes no folder until its first line
        plots += [
            Plot("label_outcomes", "Labels from the label stream, by outcome",
                 label_outcomes(run.learning or [], run.label_letters or []), _draw_label_outcomes),
            Plot("label_delays", "Applied labels by delay (label time - event time), fraud and not",
                 label_delays(run.learning or []), _draw_label_delays)]
    if run.drift_events is not None:
        plots.append(Plot("drift_events", f"Drift events per {window} of event time",
                          drift_events_per_window(run.drift_events, window_ms), over_time(_draw_drift_events)))
    for plot in plots:
        with (to / f"{plot.name}.csv").open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(plot.table.header)
            writer.writerows(("" if value is None else value for value in row) for row in plot.table.rows)
        figure = plt.figure(figsize=(PLOT_WIDTH_PX / _DPI, plot.height_px / _DPI), dpi=_DPI)
        figure.suptitle(plot.title)
        if plot.table.rows:
            plot.draw(figure, plot.table)
        else:
            figure.text(0.5, 0.5, "no data", ha="center", va="center")
        figure.tight_layout()
        figure.savefig(to / f"{plot.name}.png", dpi=_DPI)
        plt.close(figure)
    index = to / "index.html"
    index.write_text(_index_html(run_settings(run, drift_at), headline(scores, letters), plots), encoding="utf-8")
    return index


def utc(ms: int | None) -> str:
    """Epoch ms as an ISO-8601 UTC time to the second ("n/a" for None)."""
    if ms is None:
        return "n/a"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_settings(run: RunData, drift_at: int | None) -> dict[str, str]:
    """The settings the report's first table shows: the run's profile, model, input, outputs not
    written, its start and its event-time range, and the drift point given (if any)."""
    times = [s["event_time"] for s in run.scores]
    time_range = f"{utc(min(times))} to {utc(max(times))}" if times else "n/a (no scores)"
    record = run.run_record
    if record is None:
        shown = {"profile": "not recorded (a run before run.json, or not started with riskstream run)"}
    else:
        try:
            shown = _recorded(record)
        except (KeyError, TypeError, AttributeError):  # a run.json of another version
            shown = {"profile": "run.json is not readable by this version"}
    shown["event time"] = time_range
    if drift_at is not None:
        shown["input drift (--drift-at)"] = utc(drift_at)
    return shown


def _recorded(record: dict[str, Any]) -> dict[str, str]:
    settings = record["settings"]
    return {
        "profile": record["profile"] + "".join(f" --set {override}" for override in record.get("overrides") or []),
        "model": _model(settings["model"]),
        "input": _input(settings),
        "outputs": _outputs(settings),
        "not written": _not_written(settings),
        "run started": utc(record["started_at"]) if "started_at" in record else "not recorded",
    }


def _model(model: dict[str, Any]) -> str:
    text = (f"one model per {model['key']}, {model['optimizer']}, learning rate {model['learning_rate']:g} "
            f"({model['schedule']})")
    if model["cold_start"] == "global" or model["blend"] != "key" or model["on_drift"] == "rewarm":
        text += f"; global model (blend {model['blend']}, cold start {model['cold_start']})"
    if model["drift"]["detector"] != "none":
        text += f"; drift detector {model['drift']['detector']} (on drift: {model['on_drift']})"
    return text


def _input(settings: dict[str, Any]) -> str:
    def where(source: dict[str, Any], topic: str) -> str:
        if source["kind"] == "files":
            return ", ".join(source["paths"])
        if source["kind"] == "directory":
            return f"watched folder {source['directory']}"
        return f"Kafka topic {topic} at {settings['kafka']['bootstrap_servers']}"

    text = where(settings["source"], settings["kafka"]["transactions_topic"])
    labels = settings["labels"]
    if labels["mode"] != "inline":
        text += f"; labels ({labels['mode']}) from {where(labels['source'], settings['kafka']['labels_topic'])}"
    return text


def _outputs(settings: dict[str, Any]) -> str:
    if settings["output"]["kind"] == "files":
        return settings["output"]["path"]
    return f"Kafka topics at {settings['kafka']['bootstrap_servers']}"


def _not_written(settings: dict[str, Any]) -> str:
    off = []
    if not settings["analytics"]["enabled"]:
        off.append("windowed analytics (analytics.enabled false)")
    if settings["labels"]["mode"] == "inline":
        off.append("learning log and label outcomes (labels.mode inline)")
    if settings["model"]["drift"]["detector"] == "none":
        off.append("drift events (model.drift.detector none)")
    return "; ".join(off) or "none"


def _duration(ms: int) -> str:
    for unit, size in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000)):
        if ms % size == 0:
            count = ms // size
            return f"{unit}" if count == 1 else f"{count} {unit}s"
    return f"{ms} ms"


def _window_name(window: str) -> str:
    """An analytics line's `window` in words: "10 minutes", "20 minutes sliding by 10 minutes"."""
    size, *slide = (int(part.removesuffix("ms")) for part in window.split("-")[1:])
    return _duration(size) + (f" sliding by {_duration(slide[0])}" if slide else "")


def _short_duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def _times(starts: Sequence[int]) -> list[datetime]:
    return [datetime.fromtimestamp(start / 1000, timezone.utc) for start in starts]


def _event_time_axis(axes, drift_at: int | None) -> None:
    """Dates and times in UTC on the x axis, and the input's known drift as a dotted line where it
    falls inside the plotted time."""
    import matplotlib.dates as dates

    # About 7 ticks across the whole width, 6 on a narrow panel (fewer would leave some time spans
    # without a fitting interval when at least 2 are asked for).
    locator = dates.AutoDateLocator(tz=timezone.utc, minticks=2, maxticks=max(6, round(9 * axes.get_position().width)))
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=timezone.utc))  # the date at the right
    axes.set_xlabel("event time (UTC)", loc="left")
    if drift_at is not None:
        low, high = axes.get_xlim()
        at = dates.date2num(_times([drift_at])[0])
        if low <= at <= high:
            axes.axvline(at, color="black", linestyle=":", linewidth=1.2)
            axes.annotate("input drift", (at, 1.0), xycoords=("data", "axes fraction"), fontsize="x-small",
                          ha="left", va="top", xytext=(3, -3), textcoords="offset points")


def _groups(rows: Sequence[tuple], column: int = 0) -> list:
    return list(dict.fromkeys(row[column] for row in rows))


def _style(name: str) -> dict[str, Any]:
    return {"color": "grey", "linestyle": "--"} if name == OTHER else {}


def _draw_learning_curve(figure, table: Table) -> None:
    loss_axes = figure.subplots()
    auc_axes = loss_axes.twinx()
    auc_axes.set_label("twin")
    for key in _groups(table.rows):
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


def _draw_fraud_rates(figure, table: Table) -> None:
    axes = figure.subplots()
    for category in _groups(table.rows):
        rows = [row for row in table.rows if row[0] == category]
        axes.plot(_times([r[1] for r in rows]), [r[4] for r in rows], linewidth=0.9, label=category,
                  **_style(category))
    axes.set_ylabel("fraud rate")
    axes.legend(loc="upper left", fontsize="x-small", ncol=4)


def _panels(figure, count: int, rows: int = 1) -> list:
    axes = figure.subplots(rows, count, squeeze=False)
    return [panel for row in axes for panel in row]


def _draw_amounts(figure, table: Table) -> None:
    currencies = _groups(table.rows)
    for axes, currency in zip(_panels(figure, min(len(currencies), MAX_PANELS)), currencies):
        rows = [row for row in table.rows if row[0] == currency]
        lows = [max(row[1], 0.001) for row in rows]
        widths = [row[2] - low for row, low in zip(rows, lows)]
        axes.bar(lows, [row[3] for row in rows], width=widths, align="edge", alpha=0.6, label="not fraud")
        axes.bar(lows, [row[4] for row in rows], width=widths, align="edge", alpha=0.6, label="fraud")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel(f"amount ({currency})")
        axes.set_ylabel("transactions")
        axes.legend(fontsize="x-small")
    _note_panels_left_out(figure, len(currencies))


def _note_panels_left_out(figure, currencies: int) -> None:
    """Says, in the figure's corner, how many currencies had no panel (only MAX_PANELS are drawn)."""
    if currencies > MAX_PANELS:
        figure.text(0.99, 0.01, f"{currencies - MAX_PANELS} more currencies in the CSV", ha="right",
                    fontsize="x-small")


def _draw_scores(figure, table: Table) -> None:
    axes = figure.subplots()
    lows = [row[0] for row in table.rows]
    width = table.rows[0][1] - table.rows[0][0]
    axes.bar(lows, [row[2] for row in table.rows], width=width, align="edge", alpha=0.6, label="not fraud")
    axes.bar(lows, [row[3] for row in table.rows], width=width, align="edge", alpha=0.6, label="fraud")
    axes.set_yscale("log")
    axes.set_xlabel("score (probability of fraud before learning)")
    axes.set_ylabel("transactions")
    axes.legend()


def _draw_records_per_minute(figure, table: Table) -> None:
    axes = figure.subplots()
    axes.plot(_times([row[0] for row in table.rows]), [row[1] for row in table.rows], linewidth=0.8)
    axes.set_ylabel("records")


def _draw_bars(figure, table: Table, ylabel: str) -> None:
    axes = figure.subplots()
    axes.bar([str(row[0]) for row in table.rows], [row[1] for row in table.rows])
    axes.set_ylabel(ylabel)


def _draw_dead_letters(figure, table: Table) -> None:
    _draw_bars(figure, table, "dead letters")


def _draw_label_outcomes(figure, table: Table) -> None:
    _draw_bars(figure, table, "labels")


def _draw_analytics_groups(figure, table: Table) -> None:
    fields = _groups(table.rows)
    panels = _panels(figure, 2, rows=len(fields))
    for index, group_by in enumerate(fields):
        counts_axes, rates_axes = panels[2 * index], panels[2 * index + 1]
        mine = [row for row in table.rows if row[0] == group_by]
        for group in _groups(mine, 1):
            rows = [row for row in mine if row[1] == group]
            times = _times([r[3] for r in rows])
            counts_axes.plot(times, [r[4] for r in rows], linewidth=0.9, label=group, **_style(group))
            rates_axes.plot(times, [math.nan if r[7] is None else r[7] for r in rows], linewidth=0.9,
                            **_style(group))
        counts_axes.set_ylabel(f"transactions per {_window_name(mine[0][2])}", fontsize="small")
        rates_axes.set_ylabel("fraud rate", fontsize="small")
        counts_axes.set_title(f"by {group_by}", fontsize="small")
        counts_axes.legend(loc="upper left", fontsize="xx-small", ncol=4)


def _draw_analytics_amounts(figure, table: Table) -> None:
    currencies = _groups(table.rows)
    for axes, currency in zip(_panels(figure, min(len(currencies), MAX_PANELS)), currencies):
        rows = [row for row in table.rows if row[0] == currency]
        times = _times([r[2] for r in rows])
        axes.plot(times, [r[3] for r in rows], linewidth=0.9, label="sum")
        axes.plot(times, [r[4] for r in rows], linewidth=0.6, linestyle="--", label="largest")
        axes.set_yscale("log")
        axes.set_ylabel(f"amount ({currency}) per {_window_name(rows[0][1])}", fontsize="small")
        axes.legend(fontsize="x-small")
    _note_panels_left_out(figure, len(currencies))


def _draw_late(figure, table: Table) -> None:
    axes = figure.subplots()
    for window in _groups(table.rows):
        rows = [row for row in table.rows if row[0] == window]
        axes.plot(_times([r[1] for r in rows]), [r[2] for r in rows], marker="o", markersize=3, linewidth=0.8,
                  label=f"late for their {_window_name(window)} windows")
    axes.set_ylabel("late lines")
    axes.legend(fontsize="x-small")


def _draw_label_delays(figure, table: Table) -> None:
    axes = figure.subplots()
    names = [f"{_short_duration(low)}+" if high is None else f"< {_short_duration(high)}" if low == 0
             else f"{_short_duration(low)}-{_short_duration(high)}" for low, high, *_ in table.rows]
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], [row[2] for row in table.rows], width=0.4, label="not fraud")
    axes.bar([p + 0.2 for p in positions], [row[3] for row in table.rows], width=0.4, label="fraud")
    axes.set_xticks(list(positions), names, fontsize="small")
    axes.set_xlabel("delay")
    axes.set_ylabel("labels applied")
    axes.legend()


def _draw_drift_events(figure, table: Table) -> None:
    axes = figure.subplots()
    axes.plot(_times([row[0] for row in table.rows]), [row[1] for row in table.rows], marker="o", linestyle="none",
              label="drift events")
    axes.set_ylabel("drift events")
    axes.set_ylim(bottom=0)
    axes.yaxis.get_major_locator().set_params(integer=True)


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _rows(shown: dict[str, str]) -> str:
    return "\n".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
                     for name, value in shown.items())


def _index_html(settings: dict[str, str], figures: dict[str, Any], plots: Sequence[Plot]) -> str:
    shown = {name: utc(value) if name.endswith("event time") else _format(value) for name, value in figures.items()}
    sections = "\n".join(
        f'<h2>{html.escape(plot.title)}</h2>\n<img src="{plot.name}.png" width="{PLOT_WIDTH_PX}" '
        f'height="{plot.height_px}" alt="{html.escape(plot.title)}">\n'
        f'<p><a href="{plot.name}.csv">{plot.name}.csv</a> (the data behind the plot)</p>' for plot in plots)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Riskstream run report</title>
<style>body {{ font-family: sans-serif; margin: 2em; }} th {{ text-align: left; padding-right: 2em; }}</style>
</head>
<body>
<h1>Riskstream run report</h1>
<h2>The run</h2>
<table id="run">
{_rows(settings)}
</table>
<h2>Headline figures</h2>
<table id="figures">
{_rows(shown)}
</table>
{sections}
</body>
</html>
"""
