"""A newcomer's mistakes, made with the real `riskstream` command from a folder other than the
project's: each ends in one line on stderr, the documented exit code, no stack trace, and nothing
lost. None of these starts Flink: every check here happens before the job would start."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from datetime import datetime

import pytest

from streaming.config import PROFILE_ENV
from tests.cli import (
    NOTHING_LISTENS,
    PROJECT,
    RISKSTREAM,
    assert_one_line_failure,
    riskstream,
    tree_bytes,
    user_environment,
)
from udfs.labels import read_label

LOCAL = str(PROJECT / "conf" / "local.yaml")
KAFKA = str(PROJECT / "conf" / "kafka.yaml")
CLUSTER = str(PROJECT / "conf" / "cluster.yaml")


@pytest.fixture
def previous_outputs(tmp_path):
    """An output folder holding a previous run's committed outputs; returns (folder, its bytes)."""
    out = tmp_path / "out"
    for name, line in (("scores", {"txn_id": "t1", "score": 0.25}), ("dead-letters", {"stage": "parse"}),
                       ("model-snapshots", {"model_key": "grocery", "model_updates": 7})):
        (out / name).mkdir(parents=True)
        (out / name / f"{name}-0-0.jsonl").write_text(json.dumps(line) + "\n")
    return out, tree_bytes(out)


def run_on(tmp_path, out, *paths: str):
    return riskstream("run", "--config", LOCAL, "--set", f"source.paths=[{', '.join(paths)}]",
                      "--set", f"output.path={out}", cwd=tmp_path)


def test_run_on_a_mistyped_path_names_it_and_keeps_the_previous_outputs(tmp_path, previous_outputs):
    out, before = previous_outputs
    done = run_on(tmp_path, out, "data/tx.jsonl")  # relative to the current folder, where nothing is
    assert_one_line_failure(done, 2, "source.paths", str(tmp_path / "data" / "tx.jsonl"), "does not exist")
    assert tree_bytes(out) == before


def test_run_on_a_folder_given_as_a_file_says_how_to_watch_a_folder(tmp_path, previous_outputs):
    out, before = previous_outputs
    (tmp_path / "incoming").mkdir()
    done = run_on(tmp_path, out, "incoming")
    assert_one_line_failure(done, 2, "source.paths", "is a folder", "source.kind=directory")
    assert tree_bytes(out) == before


def test_run_on_inputs_without_records_fails_instead_of_printing_nan(tmp_path, previous_outputs):
    out, before = previous_outputs
    (tmp_path / "a.jsonl").write_bytes(b"")
    (tmp_path / "b.jsonl").write_bytes(b"")
    done = run_on(tmp_path, out, "a.jsonl", "b.jsonl")
    assert_one_line_failure(done, 2, "no records in", "a.jsonl", "b.jsonl")
    assert "nan" not in done.stdout + done.stderr
    assert tree_bytes(out) == before


@pytest.mark.parametrize("output", ["a-file", "a-file/out"])
def test_run_into_an_output_path_that_is_a_file_names_the_setting(tmp_path, output):
    (tmp_path / "tx.jsonl").write_text('{"txn_id": "t1"}\n')
    (tmp_path / "a-file").write_text("not a folder\n")
    done = run_on(tmp_path, output, "tx.jsonl")
    assert_one_line_failure(done, 2, "output.path", str(tmp_path / "a-file"), "is a file, not a folder")
    assert (tmp_path / "a-file").read_text() == "not a folder\n" and sorted(tmp_path.iterdir()) == [
        tmp_path / "a-file", tmp_path / "tx.jsonl"]


@pytest.mark.parametrize("options, phrases", [
    (["--from", "no-such-savepoint"], ["run --from", "no-such-savepoint", "does not exist"]),
    (["--from", "latest", "--set", "checkpointing.savepoint_directory=sp", "--set", "checkpointing.directory=cp"],
     ["run --from latest", "no savepoint or retained checkpoint"]),
    (["--summary-json", "no-such-folder/summary.json"], ["--summary-json", "no-such-folder", "does not exist"]),
    (["--summary-json", "."], ["--summary-json", "is a folder"]),
])
def test_run_with_a_bad_from_or_summary_json_names_the_option(tmp_path, previous_outputs, options, phrases):
    out, before = previous_outputs
    (tmp_path / "tx.jsonl").write_text('{"txn_id": "t1"}\n')
    done = riskstream("run", "--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", f"output.path={out}",
                      *options, cwd=tmp_path)
    assert_one_line_failure(done, 2, *phrases)
    assert tree_bytes(out) == before


def test_run_help_shows_from_and_summary_json_with_their_defaults(tmp_path):
    helped = " ".join(riskstream("run", "--help", cwd=tmp_path).stdout.split())
    assert "--from PATH resume from this savepoint" in helped and "(default: start afresh)" in helped
    assert "--summary-json FILE also write the run summary to FILE as JSON" in helped
    assert "default: not written" in helped


def test_run_on_a_missing_watched_folder_names_the_setting(tmp_path):
    done = riskstream("run", "--config", LOCAL, "--set", "source.kind=directory",
                      "--set", "source.directory=nowhere", cwd=tmp_path)
    assert_one_line_failure(done, 2, "source.directory", str(tmp_path / "nowhere"), "does not exist")


def test_a_kafka_run_without_a_broker_names_the_address(tmp_path):
    done = riskstream("run", "--config", KAFKA, "--set", f"kafka.bootstrap_servers={NOTHING_LISTENS}", cwd=tmp_path)
    assert_one_line_failure(done, 3, NOTHING_LISTENS, "make kafka-up")


def test_a_mistyped_profile_path_is_one_line(tmp_path):
    done = riskstream("run", "--config", "conf/locl.yaml", cwd=tmp_path)
    assert_one_line_failure(done, 2, "conf/locl.yaml", "No such file")


def test_invalid_yaml_says_where_the_error_is(tmp_path):
    profile = tmp_path / "broken.yaml"
    profile.write_text("source:\n  kind: files\n  paths: [a.jsonl\nmodel:\n  key: country\n")
    line = assert_one_line_failure(riskstream("run", "--config", str(profile), cwd=tmp_path), 2, str(profile))
    where = re.search(r"line (\d+), column (\d+)", line)
    assert where is not None, line
    assert int(where.group(1)) in (3, 4)  # the unclosed list on line 3, noticed on line 3 or 4


def test_a_bad_value_says_which_constraint_it_broke(tmp_path):
    done = riskstream("run", "--config", LOCAL, "--set", "model.learning_rate=-1", cwd=tmp_path)
    assert_one_line_failure(done, 2, "model.learning_rate", "greater than 0", "-1")


def test_relative_paths_in_a_profile_resolve_against_its_folder(tmp_path):
    """A profile of one's own, in its own folder, with a relative input path, run from elsewhere:
    the path is found next to the profile, so the run reaches the input check of that file."""
    folder = tmp_path / "project"
    folder.mkdir()
    profile = folder / "mine.yaml"
    profile.write_text(f"extends: {LOCAL}\nsource:\n  paths: [in/empty.jsonl]\n")
    (folder / "in").mkdir()
    (folder / "in" / "empty.jsonl").write_bytes(b"")
    done = riskstream("run", "--config", str(profile), cwd=tmp_path)
    assert_one_line_failure(done, 2, "no records in", str(folder / "in" / "empty.jsonl"))


def test_label_paths_in_a_profile_resolve_against_its_folder_as_the_transactions_do(tmp_path):
    """A profile beside its transactions and labels, run from another folder: both resolve next to
    the profile, so the run gets past the label check to the (empty) transactions file."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "tx.jsonl").write_bytes(b"")
    (folder / "lab.jsonl").write_bytes(b"")
    profile = folder / "mine.yaml"
    profile.write_text(f"extends: {LOCAL}\nsource:\n  paths: [tx.jsonl]\n"
                       "labels:\n  mode: stream\n  source:\n    kind: files\n    paths: [lab.jsonl]\n")
    (tmp_path / "elsewhere").mkdir()
    done = riskstream("run", "--config", str(profile), cwd=tmp_path / "elsewhere")
    assert_one_line_failure(done, 2, "source.paths: no records in", str(folder / "tx.jsonl"))


def test_a_single_path_given_with_set_is_a_list_of_one(tmp_path):
    done = riskstream("run", "--config", LOCAL, "--set", "source.paths=missing.jsonl", cwd=tmp_path)
    assert_one_line_failure(done, 2, f"source.paths: {tmp_path / 'missing.jsonl'} does not exist")


def test_a_path_where_a_profile_needs_a_list_says_so_in_plain_words(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text(f"extends: {LOCAL}\nsource:\n  paths: tx.jsonl\n")
    done = riskstream("run", "--config", str(profile), cwd=tmp_path)
    line = assert_one_line_failure(done, 2, "source.paths: must be a list, such as [a, b]", "tx.jsonl")
    assert "tuple" not in line


# ---------------------------------------------------------------- generate


def test_generate_into_a_folder_is_one_line_and_leaves_nothing_behind(tmp_path):
    assert_one_line_failure(riskstream("generate", "--out", ".", "--records", "10", cwd=tmp_path), 2,
                            "--out", "is a folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option, value, allowed", [("--records", "0", ">= 1"), ("--malformed-share", "1", "[0, 1)"),
                                                    ("--drift-at", "1.5", "(0, 1)")])
def test_generate_says_which_constraint_an_option_broke(tmp_path, option, value, allowed):
    done = riskstream("generate", "--out", "tx.jsonl", option, value, cwd=tmp_path)
    assert_one_line_failure(done, 2, option, allowed, value)
    assert list(tmp_path.iterdir()) == []


def test_generate_from_another_folder_writes_relative_to_it(tmp_path):
    done = riskstream("generate", "--out", "data/tx.jsonl", "--records", "25", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "tx.jsonl").read_bytes().count(b"\n") == 25
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["tx.jsonl"]


def test_generate_labels_writes_the_label_stream_of_the_transactions_beside_them(tmp_path):
    done = riskstream("generate", "--out", "tx.jsonl", "--labels", "labels/labels.jsonl", "--records", "500",
                      "--label-max-delay-ms", "3600000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "labels" / "labels.jsonl").read_bytes().splitlines()
    assert done.stdout.splitlines()[-1] == f"wrote {len(lines)} labels to labels/labels.jsonl"
    labels = [read_label(line, 65_536) for line in lines]
    transactions = {record["txn_id"]: record for record in map(json.loads, (tmp_path / "tx.jsonl").read_bytes().splitlines())}
    assert [label.label_time for label in labels] == sorted(label.label_time for label in labels)
    known = [label for label in labels if label.txn_id in transactions]
    assert len(known) > 400  # about 95% of the labelled 98%, some twice
    for label in known:
        event_time = transactions[label.txn_id]["event_time"]
        event_ms = event_time if isinstance(event_time, int) else round(
            datetime.fromisoformat(event_time.replace("Z", "+00:00")).timestamp() * 1000)
        assert 60_000 <= label.label_time - event_ms <= 2 * 3_600_000  # a second label comes up to one delay later


@pytest.mark.parametrize("options, named", [
    (["--labels", "l.jsonl", "--label-duplicate-share", "1.5"], ["--label-duplicate-share", "[0, 1]", "1.5"]),
    (["--labels", "l.jsonl", "--label-min-delay-ms", "0"], ["--label-min-delay-ms", "> 0"]),
    (["--labels", "l.jsonl", "--label-min-delay-ms", "10", "--label-max-delay-ms", "5"], ["--label-max-delay-ms"]),
    (["--labels", "tx.jsonl"], ["--labels", "also --out"]),
])
def test_generate_labels_with_a_bad_option_is_one_line_and_writes_nothing(tmp_path, options, named):
    done = riskstream("generate", "--out", "tx.jsonl", "--records", "10", *options, cwd=tmp_path)
    assert_one_line_failure(done, 2, *named)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, named", [
    (["--label-never-share", "2"], ["--label-never-share", "only applies with --labels"]),
    (["--label-seed", "11"], ["--label-seed", "only applies with --labels"]),  # the default, given: still refused
    (["--labels", "l.jsonl", "--label-never-share", "2"], ["--label-never-share", "[0, 1]", "2"]),
    (["--labels", "l.jsonl", "--label-malformed-share", "-0.5"], ["--label-malformed-share", "[0, 1]", "-0.5"]),
])
def test_generate_refuses_label_options_without_labels_and_shares_out_of_range(tmp_path, options, named):
    done = riskstream("generate", "--out", "tx.jsonl", "--records", "10", *options, cwd=tmp_path)
    assert_one_line_failure(done, 2, *named)
    assert list(tmp_path.iterdir()) == []


def event_times_ms(path) -> list[int]:
    """The event times of a generated file's records, in epoch milliseconds."""
    times = []
    for record in map(json.loads, path.read_bytes().splitlines()):
        moment = record["event_time"]
        times.append(moment if isinstance(moment, int)
                     else round(datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp() * 1000))
    return times


def test_generate_spreads_event_time_at_the_rate_asked_for(tmp_path):
    """2,000 records at one every 20 s of event time span about 11 hours, so hour-of-day features
    vary; the default rate (10 a second) keeps its 200 s, the stream of the earlier releases."""
    slow = riskstream("generate", "--out", "slow.jsonl", "--records", "2000", "--events-per-second", "0.05",
                      cwd=tmp_path)
    assert slow.returncode == 0, slow.stderr
    times = event_times_ms(tmp_path / "slow.jsonl")
    assert times == sorted(times)
    assert 0.9 * 40_000_000 < times[-1] - times[0] < 1.1 * 40_000_000
    assert len({time // 3_600_000 % 24 for time in times}) >= 11
    default = riskstream("generate", "--out", "default.jsonl", "--records", "2000", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    times = event_times_ms(tmp_path / "default.jsonl")
    assert 0.9 * 200_000 < times[-1] - times[0] < 1.1 * 200_000
    again = riskstream("generate", "--out", "again.jsonl", "--records", "2000", "--events-per-second", "0.05",
                       cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "slow.jsonl").read_bytes()


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_generate_refuses_an_event_rate_that_cannot_space_records(tmp_path, value):
    done = riskstream("generate", "--out", "tx.jsonl", "--events-per-second", value, cwd=tmp_path)
    assert_one_line_failure(done, 2, "generate --events-per-second", "[0.001, 1000000]", value)
    assert list(tmp_path.iterdir()) == []


def test_version_and_defaults_in_help(tmp_path):
    from importlib.metadata import version

    done = riskstream("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"riskstream {version('riskstream')}"
    helped = riskstream("generate", "--help", cwd=tmp_path)
    assert re.search(r"--records RECORDS\s+how many transactions \(default: 200000\)", helped.stdout), helped.stdout
    text = " ".join(helped.stdout.split())  # argparse wraps long help lines
    # A default of zero is a default too.
    assert re.search(r"--malformed-share MALFORMED_SHARE share of malformed records, \[0, 1\) \(default: 0\.0\)",
                     text), text
    assert re.search(r"--label-malformed-share LABEL_MALFORMED_SHARE [^-]*\(default: 0\.0\)", text), text


def test_every_option_with_a_default_shows_it_in_help():
    """Every command's options: each that has a value by default (not None; flags and the empty
    repeatable --set aside) says it in its help line, whatever the value, zero included."""
    import argparse

    from streaming.cli import parser
    from streaming.cli.common import HelpWithDefaults

    top = parser()
    commands = next(action for action in top._actions if isinstance(action, argparse._SubParsersAction))
    checked = []
    for name, command in commands.choices.items():
        formatter = HelpWithDefaults(prog=name)
        for action in command._actions:
            if action.nargs == 0 or action.required or action.default in (None, []):
                continue
            help_line = formatter._expand_help(action)
            assert f"(default: {action.default})" in help_line, (name, action.option_strings, help_line)
            checked.append((name, action.dest, action.default))
    assert ("generate", "malformed_share", 0.0) in checked and ("produce", "label_malformed_share", 0.0) in checked




# ---------------------------------------------------------------- commands that need a broker


@pytest.mark.parametrize("command", [["topics"], ["produce", "--generate", "10"], ["tail", "risk-scores"],
                                     ["model", "show", "grocery", "--config", KAFKA], ["model", "list", "--config", KAFKA],
                                     ["score", "--config", KAFKA]])
def test_kafka_commands_without_a_broker_fail_once_naming_the_address(tmp_path, command):
    done = riskstream(*command, "--set", f"kafka.bootstrap_servers={NOTHING_LISTENS}", cwd=tmp_path, timeout_s=60)
    assert_one_line_failure(done, 3, NOTHING_LISTENS, "make kafka-up")
    assert done.stdout == ""


def test_the_kafka_clients_log_appears_with_verbose(tmp_path):
    done = riskstream("topics", "--verbose", "--set", f"kafka.bootstrap_servers={NOTHING_LISTENS}", cwd=tmp_path,
                      timeout_s=60)
    assert done.returncode == 3
    assert len(done.stderr.strip().splitlines()) > 1  # librdkafka's connection errors, then our line
    assert done.stderr.strip().splitlines()[-1].startswith("riskstream: no Kafka broker answers")


# ---------------------------------------------------------------- model show


def test_model_show_reads_the_local_profiles_output_by_default_and_lists_the_keys(tmp_path, previous_outputs):
    out, _ = previous_outputs
    profile = tmp_path / "mine.yaml"
    profile.write_text(f"extends: {LOCAL}\noutput:\n  path: out\n")
    shown = riskstream("model", "show", " Grocery ", "--config", str(profile), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"model_key": "grocery", "model_updates": 7}
    missing = riskstream("model", "show", "fuel", "--config", str(profile), cwd=tmp_path)
    assert_one_line_failure(missing, 2, "'fuel'", "keys there: grocery")


def test_model_show_without_any_snapshot_says_to_run_the_job_as_report_does(tmp_path):
    # A user error, as `report` on a folder without outputs: exit 2, and what to do.
    done = riskstream("model", "show", "grocery", "--set", f"output.path={tmp_path / 'empty'}", cwd=tmp_path)
    assert_one_line_failure(done, 2, "no model snapshots in", str(tmp_path / "empty"), "run the job", "--from")


# ---------------------------------------------------------------- commands that need a cluster


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", [["submit", "--config", CLUSTER], ["status"], ["stop"], ["stop", "--cancel"]])
def test_cluster_commands_without_a_cluster_say_it_is_down(tmp_path, command):
    address = f"127.0.0.1:{unused_port()}"
    done = riskstream(*command, "--set", f"flink.rest_address={address}", cwd=tmp_path, timeout_s=60)
    assert_one_line_failure(done, 3, f"no Flink cluster answers at http://{address}", "make cluster-up")


def test_stop_drain_with_cancel_says_so_before_any_lookup(tmp_path):
    # The REST address is one where nothing answers: a lookup would end in exit 3, not 2.
    done = riskstream("stop", "--cancel", "--drain", "--set", f"flink.rest_address={NOTHING_LISTENS}", cwd=tmp_path)
    assert_one_line_failure(done, 2, "--drain", "not with --cancel")


def test_produce_a_missing_file_names_it_before_looking_for_a_broker(tmp_path):
    # Nothing answers at the bootstrap address: a broker check would end in exit 3, not 2.
    done = riskstream("produce", "--file", "data/tx.jsonl", "--set", f"kafka.bootstrap_servers={NOTHING_LISTENS}",
                      cwd=tmp_path)
    assert_one_line_failure(done, 2, "--file", "data/tx.jsonl", "is not a file")


@pytest.mark.parametrize("options, named", [
    (["--generate", "0"], ["produce --generate", ">= 1", "0"]),
    (["--generate", "10", "--rate", "0"], ["produce --rate", "> 0"]),
    (["--generate", "10", "--rate", "-1"], ["produce --rate", "> 0", "-1"]),
    (["--generate", "10", "--malformed-share", "5"], ["produce --malformed-share", "[0, 1)", "5"]),
    (["--generate", "10", "--events-per-second", "0"], ["produce --events-per-second", "[0.001, 1000000]"]),
    (["--generate", "10", "--label-never-share", "0.1"], ["produce --label-never-share", "--labels and --generate"]),
    (["--generate", "10", "--labels", "--label-never-share", "2"], ["produce --label-never-share", "[0, 1]", "2"]),
])
def test_produce_refuses_a_bad_argument_before_looking_for_a_broker(tmp_path, options, named):
    # Nothing answers at the bootstrap address: a broker check would end in exit 3, not 2.
    done = riskstream("produce", *options, "--set", f"kafka.bootstrap_servers={NOTHING_LISTENS}", cwd=tmp_path)
    assert_one_line_failure(done, 2, *named)


def test_run_refuses_an_input_whose_name_flink_cannot_read(tmp_path):
    (tmp_path / "back\\slash.jsonl").write_bytes(b'{"txn_id": "t1"}\n')
    done = riskstream("run", "--config", LOCAL, "--set", 'source.paths=["back\\\\slash.jsonl"]', cwd=tmp_path)
    assert_one_line_failure(done, 2, "source.paths", "backslash")


# ---------------------------------------------------------------- RISKSTREAM_PROFILE


def riskstream_with(profile: str | None, *args: str, cwd, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """`riskstream args...` as `riskstream(...)` runs it, with RISKSTREAM_PROFILE set to `profile`
    (None: unset, whatever the developer's environment says)."""
    environment = {name: value for name, value in user_environment().items() if name != PROFILE_ENV}
    if profile is not None:
        environment[PROFILE_ENV] = profile
    return subprocess.run([str(RISKSTREAM), *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout_s)


@pytest.fixture
def broken_profile(tmp_path):
    """A profile file whose YAML does not parse: any command that reads it fails naming it."""
    profile = tmp_path / "broken.yaml"
    profile.write_text("source:\n  kind: files\n  paths: [a.jsonl\n")
    return profile


@pytest.fixture
def no_cluster_profile(tmp_path):
    """The cluster profile with a REST address where nothing answers: conf/down.yaml in tmp_path."""
    profile = tmp_path / "conf" / "down.yaml"
    profile.parent.mkdir()
    profile.write_text(f"extends: {CLUSTER}\nflink:\n  rest_address: {NOTHING_LISTENS}\n")
    return profile


@pytest.mark.parametrize("command", [["run"], ["submit"], ["status"], ["stop"], ["topics"], ["produce", "--generate", "1"],
                                     ["tail", "risk-scores"], ["model", "show", "grocery"]])
def test_riskstream_profile_is_every_commands_profile(tmp_path, broken_profile, command):
    # run and submit need no --config any more; the others read it instead of their own default.
    done = riskstream_with(str(broken_profile), *command, cwd=tmp_path)
    assert_one_line_failure(done, 2, "configuration error", f"config file {broken_profile}", "invalid YAML")


@pytest.mark.parametrize("command", [["submit"], ["status"], ["stop", "--savepoint"]])
def test_riskstream_profile_relative_to_the_current_folder_is_the_cluster_commands_profile(tmp_path,
                                                                                       no_cluster_profile, command):
    # As the compose stack's containers set it: RISKSTREAM_PROFILE=conf/compose.yaml, from the project folder.
    done = riskstream_with("conf/down.yaml", *command, cwd=tmp_path)
    assert_one_line_failure(done, 3, f"no Flink cluster answers at http://{NOTHING_LISTENS}")


@pytest.mark.parametrize("command", [["submit"], ["status"]])
def test_config_on_the_command_line_wins_over_riskstream_profile(tmp_path, broken_profile, no_cluster_profile,
                                                                 command):
    done = riskstream_with(str(broken_profile), *command, "--config", str(no_cluster_profile), cwd=tmp_path)
    line = assert_one_line_failure(done, 3, f"no Flink cluster answers at http://{NOTHING_LISTENS}")
    assert str(broken_profile) not in line


def test_run_with_config_given_ignores_riskstream_profile(tmp_path, broken_profile):
    done = riskstream_with(str(broken_profile), "run", "--config", LOCAL, "--set", "source.paths=[nothere.jsonl]",
                           cwd=tmp_path)
    assert_one_line_failure(done, 2, "source.paths", str(tmp_path / "nothere.jsonl"), "does not exist")


@pytest.mark.parametrize("command", ["run", "submit", "status"])
def test_help_says_the_profile_comes_from_riskstream_profile(tmp_path, command):
    profile = "conf/mine.yaml"  # short: argparse wraps a long path at its hyphens
    helped = riskstream_with(profile, command, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())  # argparse wraps long help lines
    assert f"--config CONFIG the profile (default from {PROFILE_ENV}) (default: {profile})" in text, text
    assert "[--config CONFIG]" in text  # optional in the usage line
    without = " ".join(riskstream_with(None, command, "--help", cwd=tmp_path).stdout.split())
    assert PROFILE_ENV not in without and profile not in without


@pytest.mark.parametrize("value", [None, ""])
def test_submit_and_run_without_riskstream_profile_need_config(tmp_path, value):
    for command in ("submit", "run"):
        done = riskstream_with(value, command, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1] == \
            f"riskstream {command}: error: the following arguments are required: --config", done.stderr


def test_report_of_a_folder_without_scores_says_what_to_give(tmp_path):
    (tmp_path / "nothing").mkdir()
    done = riskstream("report", "--from", "nothing", cwd=tmp_path)
    assert_one_line_failure(done, 2, "report --from", "nothing", "no scores/ folder", "output.path")


@pytest.mark.parametrize("made", ["nothing", "a file"])
def test_report_of_a_folder_that_does_not_exist_says_so(tmp_path, made):
    if made == "a file":
        (tmp_path / "missing").write_text("not a folder\n")
    done = riskstream("report", "--from", "missing", cwd=tmp_path)
    line = assert_one_line_failure(done, 2, "report --from", "missing",
                                   "does not exist" if made == "nothing" else "is a file, not a folder")
    assert "scores/" not in line
    assert not (tmp_path / "missing" / "report").exists()


def test_report_of_a_run_without_output_lines_says_to_run_the_job(tmp_path):
    (tmp_path / "out" / "scores").mkdir(parents=True)
    done = riskstream("report", "--from", "out", cwd=tmp_path)
    assert_one_line_failure(done, 1, "no committed scores or dead letters", "run the job first")


def test_python_dash_m_streaming_cli_is_the_riskstream_command(tmp_path):
    """`python -m streaming.cli` (how make bench runs a baseline checkout's code) runs the same
    command as `riskstream`: a bad argument is refused in one line naming it, exit 2."""
    import sys

    done = subprocess.run([sys.executable, "-m", "streaming.cli", "generate", "--out", str(tmp_path / "tx.jsonl"),
                           "--records", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr.strip()) == (2, "riskstream: generate --records: must be >= 1 (got 0)")
    assert not (tmp_path / "tx.jsonl").exists()
