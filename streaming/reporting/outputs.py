"""Reading the files a job reads and writes, and the run summary: counts, accounting and
prequential quality."""

from __future__ import annotations

import math
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from udfs.metrics import labelled, log_loss, roc_auc

# The folders a file-output job writes under `output.path`, one FileSink each (analytics and
# late with analytics.enabled only; learning and label-dead-letters with labels.mode stream or both;
# drift with model.drift.detector other than none; model-versions with the global model, which also
# reads it back: a new run must start without an earlier run's versions).
OUTPUTS = ("scores", "dead-letters", "model-snapshots", "analytics", "late", "learning", "label-dead-letters", "drift",
           "model-versions", "repeated-ids")
# What `riskstream run` writes beside them: the run's settings (RUN_RECORD, read by the report), and
# what `riskstream report` writes there by default (REPORT). Both belong to one run's outputs, so
# they are set aside, dropped and restored with them: a report never shows an earlier run beside a
# newer run's outputs.
RUN_RECORD = "run.json"
REPORT = "report"
RUN_FILES = (*OUTPUTS, RUN_RECORD, REPORT)


def committed_parts(folder: Path) -> Iterator[Path]:
    """The committed part files of a FileSink folder, by name (none if there is no folder).
    In-progress and pending part files are hidden (their names start with a dot) and skipped:
    they may still change."""
    if not folder.is_dir():
        return
    for part in sorted(folder.iterdir()):
        if not part.name.startswith(".") and part.is_file():
            yield part


def uncommitted_line_count(folder: Path) -> int:
    """How many whole lines the in-progress and pending part files of a FileSink folder hold now:
    written by the job, not yet committed (a checkpoint commits them; a restart may drop them)."""
    if not folder.is_dir():
        return 0
    lines = 0
    for part in folder.iterdir():
        if part.name.startswith("."):
            try:
                lines += part.read_bytes().count(b"\n")
            except OSError:  # committed (renamed) or dropped meanwhile
                pass
    return lines


def committed_lines(folder: Path) -> Iterator[dict[str, Any]]:
    """Every JSON line in the committed part files of a FileSink folder."""
    for part in committed_parts(folder):
        with part.open("rb") as lines:
            for line in lines:
                if line.strip():
                    yield orjson.loads(line)


def latest_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each model key's latest snapshot: the one after the most updates; of equals, the one whose
    standardization has seen the most records (the end-of-input snapshot also counts the unlabelled
    records after the last update), then the last read."""
    latest: dict[str, dict[str, Any]] = {}
    for snapshot in snapshots:
        kept = latest.get(snapshot["model_key"])
        if kept is None or _progress(snapshot) >= _progress(kept):
            latest[snapshot["model_key"]] = snapshot
    return latest


def _progress(snapshot: dict[str, Any]) -> tuple[int, int]:
    """How far a key's model had come at a snapshot: (updates, records its standardization saw)."""
    return snapshot["model_updates"], snapshot.get("standardization", {}).get("count", 0)


def latest_snapshot(snapshots: Iterable[dict[str, Any]], model_key: str) -> dict[str, Any] | None:
    """The latest snapshot of `model_key` (None if it has none)."""
    return latest_snapshots(s for s in snapshots if s["model_key"] == model_key).get(model_key)


def file_records(path: str | Path) -> Iterator[bytes]:
    """The records of a file as the file source reads them (SourceTaggedLineFormat.java): one per
    newline, plus a last line that has no newline; without the newline."""
    with open(path, "rb") as records:
        for line in records:
            yield line[:-1] if line.endswith(b"\n") else line


def count_file_records(paths: list[str] | tuple[str, ...]) -> int:
    """How many records the file source reads from `paths`."""
    return sum(1 for path in paths for _ in file_records(path))


# A pause longer than this between two records the job processed, in milliseconds, is time it
# waited for input (a watched folder between files, the break between a stopped run and its
# resumption), and is not counted as reading time.
IDLE_GAP_MS = 5_000

# The values a dead letter's reason quotes: quoted text, hex bytes and numbers (incl. signed, decimal).
_REASON_VALUE = re.compile(r"'[^']*'|\"[^\"]*\"|0x[0-9a-fA-F]+|(?<![\w-])-?\d+(?:\.\d+)?\b")


# How many kinds of dead-letter reason the printed summary names, most frequent first.
TOP_REASONS = 3


def reason_kind(reason: str) -> str:
    """A dead letter's reason without the values it quotes, so that reasons of one kind count
    together: "channel 'fax' is not one of ..." and "channel 'telex' ..." are both
    "channel … is not one of ..."."""
    return _REASON_VALUE.sub("…", reason)


def reading_seconds(processed_at_ms: Iterable[int]) -> float:
    """How long the job was processing records, in seconds, from the processing times (epoch ms) of
    its outputs: the sum of the gaps between consecutive times, leaving out gaps over IDLE_GAP_MS
    (waiting for input). Start-up, and the wait for Ctrl-C after the input ended, are not in it."""
    times = sorted(processed_at_ms)
    return sum(gap for gap in (b - a for a, b in zip(times, times[1:])) if gap <= IDLE_GAP_MS) / 1000


@dataclass
class RunSummary:
    records_read: int | None  # None: not known (a run resumed from a restore point that holds no count)
    scored: int
    dead_lettered: int
    dead_letters_by_stage: Counter = field(default_factory=Counter)
    dead_letters_by_reason: Counter = field(default_factory=Counter)  # by reason_kind
    log_loss: float = float("nan")
    roc_auc: float = float("nan")
    labelled: int = 0
    keys: int = 0
    wall_seconds: float = 0.0
    # The time the job spent processing records (reading_seconds), and how many records the input
    # files hold (None for a watched folder or Kafka), so a run stopped early says "N of M".
    reading_seconds: float = 0.0
    records_in_input: int | None = None
    # The output folders the run has written (OUTPUTS names): the summary points only to those.
    folders: frozenset = frozenset()
    # With analytics on: window lines written, and late lines (one per record and window size it
    # was late for); None when analytics were off.
    windows: int | None = None
    late: int | None = None
    # With labels.mode stream or both: labels read (None: not counted), applied (learning lines),
    # and dead-lettered by outcome (unreadable ones by stage); None when labels were inline only.
    labels_read: int | None = None
    labels_applied: int | None = None
    labels_dead_lettered: Counter | None = None
    # With drift detection on: drift events written, and the model keys they name; None when off.
    drift_events: int | None = None
    drift_keys: int | None = None
    # With de-duplication on: txn_ids reported as scored under two model keys (repeated-ids/);
    # None when it was off.
    repeated_ids: int | None = None

    @property
    def labels_pending(self) -> int | None:
        """Labels read but neither applied nor dead-lettered: waiting for their transaction or its
        logged features when the run stopped (0 when the input ended)."""
        if self.labels_read is None or self.labels_applied is None:
            return None
        return self.labels_read - self.labels_applied - sum(self.labels_dead_lettered.values())

    @property
    def reconciled(self) -> bool:
        """read = scored + dead-lettered (not checked when records_read is not known), and no label
        accounted twice."""
        read_accounted = self.records_read is None or self.records_read == self.scored + self.dead_lettered
        return read_accounted and (self.labels_pending or 0) >= 0

    @property
    def records_per_second(self) -> float:
        """Records processed (scored or dead-lettered) per second of reading_seconds; 0 when too few to time."""
        return (self.scored + self.dead_lettered) / self.reading_seconds if self.reading_seconds else 0.0

    def _see(self, folder: str) -> str:
        return f"see {folder}/" if folder in self.folders else f"no {folder}/ written"

    def lines(self) -> list[str]:
        stages = ", ".join(f"{stage} {n}" for stage, n in sorted(self.dead_letters_by_stage.items())) or "none"
        reasons = [f"{'  by reason' if i == 0 else '':<18}{n:>12,}   {reason}"
                   for i, (reason, n) in enumerate(self.dead_letters_by_reason.most_common(TOP_REASONS))]
        more = len(self.dead_letters_by_reason) - TOP_REASONS
        if more > 0:
            reasons.append(f"{'':<33}and {more} other reason{'s' if more > 1 else ''} (--summary-json lists all)")
        if self.records_read is None:
            read = f"{'unknown':>12}   (the restore point holds no count of the records read before it)"
        else:
            read = f"{self.records_read:>12,}"
            if self.records_in_input is not None and self.records_read < self.records_in_input:
                read += f"   of {self.records_in_input:,} in the input (stopped before its end)"
        accounting = ("not checked (records read unknown)" if self.records_read is None else
                      "read = scored + dead-lettered" if self.reconciled else "MISMATCH")
        return [
            f"records read      {read}",
            f"scored            {self.scored:>12,}   ({self.keys} model keys)",
            f"dead-lettered     {self.dead_lettered:>12,}   (by stage: {stages})",
        ] + reasons + [
            f"accounting        {accounting}",
            f"prequential       log loss {self.log_loss:.4f}, ROC AUC {self.roc_auc:.4f} over {self.labelled:,} labels",
            f"throughput        {self.records_per_second:,.0f} records/s over {self.reading_seconds:.1f} s of reading "
            f"({self.wall_seconds:.1f} s in all, with start-up)",
        ] + ([] if self.windows is None else [
            f"analytics         {self.windows:,} window lines, {self.late:,} late-record lines ({self._see('late')})"]
        ) + ([] if self.labels_applied is None else self._label_lines()) + ([] if self.drift_events is None else [
            f"drift events      {self.drift_events:>12,}   ({self.drift_keys} model keys; {self._see('drift')})"]
        ) + ([] if self.repeated_ids is None else [
            f"repeated txn_ids  {self.repeated_ids:>12,}   (scored under two model keys; {self._see('repeated-ids')})"])

    def as_json(self) -> dict[str, Any]:
        """The summary's figures for `riskstream run --summary-json`: counts as integers, times in
        seconds, NaN (no labels) as null; label and drift figures only when those are on."""
        figures = {
            "records_read": self.records_read, "records_in_input": self.records_in_input,
            "scored": self.scored, "dead_lettered": self.dead_lettered, "reconciled": self.reconciled,
            "dead_letters_by_stage": dict(sorted(self.dead_letters_by_stage.items())),
            "dead_letters_by_reason": dict(self.dead_letters_by_reason.most_common()),
            "model_keys": self.keys, "labelled": self.labelled,
            "log_loss": None if math.isnan(self.log_loss) else self.log_loss,
            "roc_auc": None if math.isnan(self.roc_auc) else self.roc_auc,
            "reading_seconds": self.reading_seconds, "records_per_second": self.records_per_second,
            "wall_seconds": self.wall_seconds,
        }
        if self.windows is not None:
            figures.update(window_lines=self.windows, late_lines=self.late)
        if self.labels_applied is not None:
            figures.update(labels_read=self.labels_read, labels_applied=self.labels_applied,
                           labels_dead_lettered=dict(sorted(self.labels_dead_lettered.items())),
                           labels_pending=self.labels_pending)
        if self.drift_events is not None:
            figures.update(drift_events=self.drift_events, drift_keys=self.drift_keys)
        if self.repeated_ids is not None:
            figures.update(repeated_ids=self.repeated_ids)
        return figures

    def _label_lines(self) -> list[str]:
        outcomes = ", ".join(f"{name} {n}" for name, n in sorted(self.labels_dead_lettered.items())) or "none"
        read = "not counted" if self.labels_read is None else f"{self.labels_read:,}"
        return [
            f"labels read       {read:>12}",
            f"labels applied    {self.labels_applied:>12,}   ({self._see('learning')})",
            f"labels dead-lettered {sum(self.labels_dead_lettered.values()):>9,}   (by outcome or stage: {outcomes})",
            f"labels pending    {self.labels_pending if self.labels_pending is not None else 'unknown':>12}   "
            "(read = applied + dead-lettered + pending)",
        ]


def summarize(output: Path, records_read: int | None, wall_seconds: float, labels_streamed: bool = False,
              labels_read: int | None = None, drift_on: bool = False,
              records_in_input: int | None = None) -> RunSummary:
    """The summary of a finished run from its committed outputs; with `labels_streamed` (labels.mode
    stream or both) also its labels', `labels_read` being what the label source read (None: not known);
    with `drift_on` (model.drift.detector not none) its drift events'. `records_read` None: not known;
    `records_in_input`: what the input files hold (None for other sources)."""
    pairs = []
    keys = set()
    processed_at = []  # epoch ms of every committed score and dead letter
    for score in committed_lines(output / "scores"):
        pairs.append((score["score"], score["label"]))
        keys.add(score["model_key"])
        if "scored_at" in score:
            processed_at.append(score["scored_at"])
    stages, reasons = Counter(), Counter()
    for letter in committed_lines(output / "dead-letters"):
        stages[letter["stage"]] += 1
        reasons[reason_kind(letter.get("reason", ""))] += 1
        if "received_at" in letter:
            processed_at.append(letter["received_at"])
    scores, labels = labelled(pairs)
    analytics = (output / "analytics").is_dir()
    drifted = [event["model_key"] for event in committed_lines(output / "drift")] if drift_on else []
    return RunSummary(
        records_read=records_read,
        scored=len(pairs),
        dead_lettered=sum(stages.values()),
        dead_letters_by_stage=stages,
        dead_letters_by_reason=reasons,
        log_loss=log_loss(scores, labels),
        roc_auc=roc_auc(scores, labels),
        labelled=len(labels),
        keys=len(keys),
        wall_seconds=wall_seconds,
        reading_seconds=reading_seconds(processed_at),
        records_in_input=records_in_input,
        folders=frozenset(name for name in OUTPUTS if (output / name).is_dir()),
        windows=sum(1 for _ in committed_lines(output / "analytics")) if analytics else None,
        late=sum(1 for _ in committed_lines(output / "late")) if analytics else None,
        **(_label_figures(output, labels_read) if labels_streamed else {}),
        drift_events=len(drifted) if drift_on else None,
        drift_keys=len(set(drifted)) if drift_on else None,
        repeated_ids=(sum(1 for _ in committed_lines(output / "repeated-ids")) if (output / "repeated-ids").is_dir()
                      else None),
    )


def _label_figures(output: Path, labels_read: int | None) -> dict[str, Any]:
    letters = Counter(letter.get("outcome") or letter["stage"] for letter in committed_lines(output / "label-dead-letters"))
    return {"labels_read": labels_read, "labels_applied": sum(1 for _ in committed_lines(output / "learning")),
            "labels_dead_lettered": letters}


def write_run_record(folder: Path, settings: Any, profile: Path, overrides: list[str]) -> Path:
    """Writes `folder/RUN_RECORD`: the profile and --set overrides a run was started with, when it
    started (epoch ms), and its settings with paths resolved (the privacy section left out: it
    holds the pseudonym key). Returns its path."""
    record = {"schema_version": 1, "profile": str(Path(profile).resolve()), "overrides": list(overrides),
              "started_at": int(time.time() * 1000),
              "settings": settings.model_dump(mode="json", by_alias=True, exclude={"privacy"})}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_RECORD
    path.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def read_run_record(folder: Path) -> dict[str, Any] | None:
    """The run record `write_run_record` wrote in `folder` (None without one, or an unreadable one)."""
    try:
        record = orjson.loads((folder / RUN_RECORD).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and {"profile", "settings"} <= record.keys() else None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class RunOutputs:
    """What `riskstream run` leaves under `folder` (RUN_FILES: the output folders, the run record and
    the default report), and the previous run's.

    The previous run's outputs are replaced only once the new run has committed its own: they are
    moved aside to `folder/.previous` when a run starts, dropped when it ends with committed
    output, and moved back when it fails. A run killed outright (SIGKILL, power cut) leaves them
    in `.previous`, and the next run moves them back before it starts.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.aside = folder / ".previous"
        self.had_previous = False  # whether set_previous_aside found a previous run's outputs

    def set_previous_aside(self) -> None:
        if self.aside.exists():  # a run that was killed before it could put them back
            self.restore_previous()
        self.aside.mkdir(parents=True)
        for name in RUN_FILES:
            if (self.folder / name).exists():
                (self.folder / name).rename(self.aside / name)
                self.had_previous = True

    def restore_previous(self) -> None:
        """Deletes this run's outputs and puts the previous run's back."""
        for name in RUN_FILES:
            _remove(self.folder / name)
            if (self.aside / name).exists():
                (self.aside / name).rename(self.folder / name)
        shutil.rmtree(self.aside, ignore_errors=True)

    def drop_previous(self) -> None:
        shutil.rmtree(self.aside, ignore_errors=True)


class CommittedCounts:
    """Counts the lines of the committed part files under an output folder as a run goes on; each
    `counts()` reads only the part files committed since the last call (a committed part file
    never changes)."""

    def __init__(self, folder: Path, outputs: Iterable[str] = ("scores", "dead-letters")):
        self.folders = {name: folder / name for name in outputs}
        self.counted: set[Path] = set()
        self.lines = dict.fromkeys(self.folders, 0)

    def counts(self) -> dict[str, int]:
        """Output name -> committed lines so far."""
        for name, folder in self.folders.items():
            for part in committed_parts(folder):
                if part in self.counted:
                    continue
                with part.open("rb") as lines:
                    self.lines[name] += sum(1 for line in lines if line.strip())
                self.counted.add(part)
        return dict(self.lines)
