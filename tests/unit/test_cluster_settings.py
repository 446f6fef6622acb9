"""Checkpointing settings and the Flink keys they become (streaming/config/,
streaming/config/flink_options.py), profiles that extend one another, the session cluster's helpers that
need no Flink (streaming/ops/local_cluster.py, streaming/ops/rest.py), and `riskstream model show` (streaming/cli/)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from streaming.cli import main
from streaming.config import ConfigError, load_settings
from streaming.config.flink_options import flink_options, local_cluster_options
from streaming.ops import local_cluster, rest
from streaming.reporting.outputs import latest_snapshot, latest_snapshots

PROJECT = Path(__file__).resolve().parents[2]


def test_the_cluster_profile_checkpoints_incrementally_to_rocksdb_and_keeps_the_last_checkpoint():
    options = flink_options(load_settings(PROJECT / "conf" / "cluster.yaml"))
    assert options["state.backend.type"] == "rocksdb"
    assert options["execution.checkpointing.incremental"] == "true"
    assert options["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert options["execution.checkpointing.tolerable-failed-checkpoints"] == "3"
    assert options["restart-strategy.type"] == "exponential-delay"
    assert options["execution.checkpointing.interval"] == "10000 ms"
    assert options["execution.checkpointing.dir"] == (PROJECT / "var/cluster/checkpoints").as_uri()
    assert options["pipeline.max-parallelism"] == "128"


def test_the_local_profile_keeps_state_on_the_heap_and_fails_on_the_first_error():
    options = flink_options(load_settings(PROJECT / "conf" / "local.yaml"))
    assert options["state.backend.type"] == "hashmap"
    assert options["execution.checkpointing.incremental"] == "false"
    assert options["execution.checkpointing.externalized-checkpoint-retention"] == "DELETE_ON_CANCELLATION"
    assert options["restart-strategy.type"] == "none"


@pytest.mark.parametrize("restart, expected", [
    ("{strategy: fixed-delay, attempts: 7, delay_ms: 250}",
     {"restart-strategy.type": "fixed-delay", "restart-strategy.fixed-delay.attempts": "7",
      "restart-strategy.fixed-delay.delay": "250 ms"}),
    ("{strategy: exponential-delay, delay_ms: 500, max_delay_ms: 8000}",
     {"restart-strategy.type": "exponential-delay", "restart-strategy.exponential-delay.initial-backoff": "500 ms",
      "restart-strategy.exponential-delay.max-backoff": "8000 ms"}),
])
def test_the_restart_strategy_becomes_flinks_keys(restart, expected):
    options = flink_options(load_settings(PROJECT / "conf" / "local.yaml", [f"checkpointing.restart={restart}"]))
    assert {key: options[key] for key in expected} == expected


@pytest.mark.parametrize("override, field", [
    ("checkpointing.incremental=true", "checkpointing.incremental"),  # hashmap cannot
    ("checkpointing.state_backend=forst", "checkpointing.state_backend"),
    ("checkpointing.tolerable_failures=-1", "checkpointing.tolerable_failures"),
    ("checkpointing.restart={strategy: sometimes}", "checkpointing.restart.strategy"),
    ("checkpointing.restart={attempts: 0}", "checkpointing.restart.attempts"),
])
def test_a_bad_checkpointing_setting_fails_naming_it(override, field):
    with pytest.raises(ConfigError) as info:
        load_settings(PROJECT / "conf" / "local.yaml", [override])
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(field)


def test_a_profile_extends_another_setting_by_setting(tmp_path):
    base = yaml.safe_load((PROJECT / "conf" / "local.yaml").read_text())
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmodel: {learning_rate: 0.2}\n")
    child = load_settings(tmp_path / "child.yaml")
    assert child.model.learning_rate == 0.2
    assert child.model.key == base["model"]["key"]  # the rest of the section is the base's
    assert len(child.features.numeric) == len(base["features"]["numeric"])


def test_the_kafka_profile_is_the_local_one_with_kafka_in_and_out():
    local = load_settings(PROJECT / "conf" / "local.yaml").model_dump()
    kafka = load_settings(PROJECT / "conf" / "kafka.yaml").model_dump()
    assert kafka["source"] == {**local["source"], "kind": "kafka", "paths": ()}
    assert kafka["output"] == {**local["output"], "kind": "kafka"}  # the path, resolved in conf/, too
    restart = {"strategy": "fixed-delay", "attempts": 5, "delay_ms": 2000, "max_delay_ms": 60_000}
    assert kafka["checkpointing"] == {**local["checkpointing"], "tolerable_failures": 3, "restart": restart}
    rest = ("cleaning", "privacy", "features", "model", "performance", "flink")
    assert {name: kafka[name] for name in rest} == {name: local[name] for name in rest}


def test_profiles_that_extend_each_other_fail_in_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends"):
        load_settings(tmp_path / "a.yaml")


def test_the_rest_address_comes_from_flinks_config(tmp_path):
    (tmp_path / "config.yaml").write_text("rest:\n  address: 127.0.0.1\n  port: 18999\n")
    assert local_cluster.LocalCluster(conf_dir=tmp_path).rest_url == "http://127.0.0.1:18999"
    assert local_cluster.LocalCluster().rest_url == "http://127.0.0.1:18081"  # conf/flink, as the README says


def test_the_cluster_profile_finds_the_local_clusters_rest_api():
    settings = load_settings(PROJECT / "conf" / "cluster.yaml")
    assert settings.flink.rest_url == local_cluster.LocalCluster().rest_url


def test_the_submit_command_line_is_what_a_user_would_type_in_a_shell():
    typed = local_cluster.command_line(["flink", "run", "--set", "model.key=account id"])
    assert typed == f"FLINK_CONF_DIR={PROJECT / 'conf' / 'flink'} flink run --set 'model.key=account id'"


def test_the_rest_client_says_where_it_found_no_cluster_and_how_to_start_one():
    with pytest.raises(rest.ClusterUnreachable, match=r"no Flink cluster answers at http://127.0.0.1:1 .*make cluster-up"):
        rest.rest("http://127.0.0.1:1", "GET", "/overview", timeout=2)


def test_kill_tree_kills_a_process_and_everything_below_it():
    parent = subprocess.Popen(["bash", "-c", "sleep 300 & sleep 300 & wait"])
    deadline = time.monotonic() + 10
    while len(local_cluster.descendants(parent.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = local_cluster.descendants(parent.pid)
    assert len(children) == 2

    assert sorted(local_cluster.kill_tree(parent.pid)) == sorted([parent.pid, *children])
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in children):
        assert time.monotonic() < deadline, "a child survived"
        time.sleep(0.05)


def test_the_cluster_finds_its_processes_by_their_configuration_folder(tmp_path):
    local = local_cluster.LocalCluster(conf_dir=tmp_path / "flink", state_dir=tmp_path / "var")
    assert local.processes() == []
    # Stands in for a TaskManager's JVM, which Flink's scripts start with --configDir <FLINK_CONF_DIR>
    # (one process that forks nothing, whose command line holds the arguments after the code).
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "TaskManagerRunner",
                                "--configDir", str(tmp_path / "flink")])
    try:
        assert local.processes() == local.taskmanager_pids() == [process.pid]
        assert local_cluster.LocalCluster(conf_dir=tmp_path / "other").processes() == []
    finally:
        local_cluster.kill_tree(process.pid)
        process.wait(timeout=10)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def snapshot(key: str, updates: int, bias: float) -> dict:
    return {"model_key": key, "model_updates": updates, "bias": bias, "weights": {"amount": bias / 2}}


def test_the_latest_snapshot_is_the_one_after_the_most_updates():
    snapshots = [snapshot("grocery", 2000, 0.2), snapshot("travel", 1000, 0.5), snapshot("grocery", 1000, 0.1),
                 snapshot("grocery", 2000, 0.3)]  # a repeat after a restart: the last read wins
    assert latest_snapshots(snapshots)["grocery"]["bias"] == 0.3
    assert latest_snapshot(snapshots, "travel")["bias"] == 0.5
    assert latest_snapshot(snapshots, "fuel") is None


def test_the_latest_snapshot_of_equal_updates_is_the_one_that_saw_more_records():
    # The end-of-input snapshot of a key whose last update also triggered a periodic one: the same
    # updates, and the unlabelled records after them in its standardization, in whichever part file.
    final = {"model_key": "fuel", "model_updates": 1000, "standardization": {"count": 1040}, "bias": 2.0}
    periodic = {"model_key": "fuel", "model_updates": 1000, "standardization": {"count": 1012}, "bias": 1.0}
    assert latest_snapshots([final, periodic])["fuel"]["bias"] == 2.0
    assert latest_snapshots([periodic, final])["fuel"]["bias"] == 2.0


def test_model_show_prints_a_keys_latest_model_from_the_file_output(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RISKSTREAM_PSEUDONYM_KEY", raising=False)
    folder = tmp_path / "out" / "model-snapshots"
    folder.mkdir(parents=True)
    (folder / "model-snapshots-0-0.jsonl").write_text(
        "\n".join(json.dumps(s) for s in [snapshot("grocery", 1000, 0.1), snapshot("grocery", 3000, 0.7)]) + "\n")
    (folder / ".model-snapshots-0-1.jsonl.inprogress").write_text(json.dumps(snapshot("grocery", 4000, 9.9)) + "\n")
    profile = ["--config", str(PROJECT / "conf" / "local.yaml"), "--set", f"output.path={tmp_path / 'out'}"]

    assert main(["model", "show", " Grocery ", *profile]) == 0  # normalized as the job does
    shown = json.loads(capsys.readouterr().out)
    assert (shown["model_updates"], shown["bias"]) == (3000, 0.7)  # not the uncommitted one

    assert main(["model", "show", "fuel", *profile]) == 2
    assert "no snapshot of model key 'fuel'" in capsys.readouterr().err


def test_flink_overrides_are_strings_and_a_bad_file_fails_in_one_line(tmp_path):
    assert local_cluster.flink_overrides(PROJECT / "conf" / "flink" / "test.yaml")["heartbeat.timeout"] == "5000"
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    for path in (tmp_path / "bad.yaml", tmp_path / "missing.yaml"):
        with pytest.raises(ConfigError) as info:
            local_cluster.flink_overrides(path)
        assert len(str(info.value).splitlines()) == 1 and str(path) in str(info.value)


def test_the_pause_between_checkpoints_becomes_flinks_min_pause():
    options = flink_options(load_settings(PROJECT / "conf" / "local.yaml", ["checkpointing.min_pause_ms=800"]))
    assert options["execution.checkpointing.min-pause"] == "800 ms"
    with pytest.raises(ConfigError, match="checkpointing.min_pause_ms"):
        load_settings(PROJECT / "conf" / "local.yaml", ["checkpointing.min_pause_ms=-1"])


def test_the_innermost_cause_of_a_java_trace_is_its_last_caused_by():
    trace = ("org.apache.flink.client.program.ProgramInvocationException: outer\n\tat a.b(C.java:1)\n"
             "Caused by: java.io.IOException: middle\n\tat d.e(F.java:2)\n"
             "Caused by: java.nio.file.FileAlreadyExistsException: /tmp/a-file\n\tat g.h(I.java:3)\n")
    assert local_cluster.innermost_cause(trace, "none") == "java.nio.file.FileAlreadyExistsException: /tmp/a-file"
    assert local_cluster.innermost_cause("just one line", "just one line") == "just one line"


def test_the_latest_restore_point_is_the_newest_complete_savepoint_or_retained_checkpoint(tmp_path):
    import os

    from streaming.ops.local_cluster import latest_restore_point

    checkpoints, savepoints = tmp_path / "checkpoints", tmp_path / "savepoints"
    assert latest_restore_point(str(checkpoints), str(savepoints)) is None  # neither folder exists yet

    def complete(folder, written_at):
        folder.mkdir(parents=True)
        (folder / "_metadata").write_bytes(b"metadata")
        os.utime(folder / "_metadata", (written_at, written_at))
        return folder

    older_savepoint = complete(savepoints / "savepoint-0a1b2c-1234", 1_000)
    assert latest_restore_point(str(checkpoints), str(savepoints)) == older_savepoint
    checkpoint = complete(checkpoints / "6b2ba11f9192c8e9c424a1d0b8246996" / "chk-7", 2_000)
    (checkpoints / "6b2ba11f9192c8e9c424a1d0b8246996" / "chk-8").mkdir()  # being written: no _metadata yet
    (checkpoints / "6b2ba11f9192c8e9c424a1d0b8246996" / "shared").mkdir()
    assert latest_restore_point(str(checkpoints), str(savepoints)) == checkpoint
    newer_savepoint = complete(savepoints / "savepoint-0a1b2c-5678", 3_000)
    assert latest_restore_point(str(checkpoints), str(savepoints)) == newer_savepoint


def flattened(mapping: dict, prefix: str = "") -> dict[str, object]:
    """A nested Flink config.yaml as Flink reads it: `a: {b: 1}` is the key `a.b`."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_the_session_cluster_enables_the_prometheus_reporter_from_the_plugins_its_scripts_load():
    """The reporter's factory class is in the plugin jar of the folder the cluster's scripts are
    given as FLINK_PLUGINS_DIR, and each of a JobManager and TaskManagers on this machine gets a
    port (tests/integration/test_job_metrics.py reads the metrics from them)."""
    import zipfile

    conf = flattened(yaml.safe_load((PROJECT / "conf" / "flink" / "config.yaml").read_text(encoding="utf-8")))
    factory = conf["metrics.reporter.prom.factory.class"]
    assert factory == "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
    plugins = Path(local_cluster.LocalCluster.of_project(PROJECT).environment()["FLINK_PLUGINS_DIR"])
    jars = list(plugins.glob("*/flink-metrics-prometheus-*.jar"))
    assert len(jars) == 1, f"no single Prometheus reporter plugin in {plugins}: {jars}"
    assert factory.replace(".", "/") + ".class" in zipfile.ZipFile(jars[0]).namelist()
    first, last = map(int, str(conf["metrics.reporter.prom.port"]).split("-"))
    assert last - first + 1 >= 4, "a JobManager and the TaskManagers of a failover drill need a port each"


def test_the_embedded_mini_cluster_gets_the_profiles_managed_memory_and_a_bad_size_fails_naming_it():
    assert local_cluster_options(load_settings(PROJECT / "conf" / "local.yaml")) == {
        "taskmanager.memory.managed.size": "1024m"}
    assert local_cluster_options(load_settings(PROJECT / "conf" / "labels.yaml", ["flink.local_managed_memory_mb=2048"])
                                 ) == {"taskmanager.memory.managed.size": "2048m"}
    assert "taskmanager.memory.managed.size" not in flink_options(load_settings(PROJECT / "conf" / "local.yaml"))
    with pytest.raises(ConfigError, match=r"flink\.local_managed_memory_mb.*128"):
        load_settings(PROJECT / "conf" / "local.yaml", ["flink.local_managed_memory_mb=64"])
