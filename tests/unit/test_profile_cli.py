"""`riskstream config show` and `run --dry-run` / `submit --dry-run`, the real command run from a
temporary folder. No Flink starts."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from streaming.config import SECRET_MASK, load_settings
from tests.cli import (
    NOTHING_LISTENS,
    PROJECT,
    RISKSTREAM,
    assert_one_line_failure,
    project_copy,
    riskstream,
    tree_bytes,
    user_environment,
)

LOCAL = str(PROJECT / "conf" / "local.yaml")
KAFKA = str(PROJECT / "conf" / "kafka.yaml")


def shown_profile(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return yaml.safe_load(done.stdout)


def as_file(profile: dict, path):
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.mark.parametrize("profile, overrides", [
    (LOCAL, []),
    (str(PROJECT / "conf" / "cluster.yaml"), ["model.learning_rate=0.05", "source.paths=[in/tx.jsonl]",
                                             "output.path=out", "model.drift.detector=adwin"]),
    (str(PROJECT / "conf" / "labels.yaml"), ["model.optimizer=ftrl", "model.ftrl.alpha=0.2",
                                            "analytics.enabled=true"]),
])
def test_config_show_prints_the_settings_the_job_would_use(tmp_path, monkeypatch, profile, overrides):
    """The printed YAML, fed back as a profile with the pseudonym key given again, loads to exactly
    the settings of the profile with the overrides (relative --set paths against the current folder)."""
    done = riskstream("config", "show", "--config", profile, *[f"--set={override}" for override in overrides],
                      cwd=tmp_path)
    shown = shown_profile(done)
    assert shown["privacy"]["pseudonym_key"] is None
    monkeypatch.chdir(tmp_path)
    expected = load_settings(profile, overrides)
    key = expected.privacy.pseudonym_key.get_secret_value()
    assert key not in done.stdout
    assert load_settings(as_file(shown, tmp_path / "shown.yaml"), [f"privacy.pseudonym_key={key}"]) == expected


def test_config_show_masks_kafka_properties_and_a_profile_with_the_mask_is_refused(tmp_path):
    secrets = {"security.protocol": "SASL_SSL",
               "sasl.jaas.config": 'org.apache.kafka.common.security.plain.PlainLoginModule required '
                                   'username="riskstream" password="hunter2-kafka";'}
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"extends": KAFKA, "privacy": {"pseudonym_key": "hunter2-pseudonyms"},
                                    "kafka": {"properties": secrets}}))
    done = riskstream("config", "show", "--config", str(mine), cwd=tmp_path)
    shown = shown_profile(done)
    assert "hunter2" not in done.stdout
    assert shown["kafka"]["properties"] == {"security.protocol": SECRET_MASK, "sasl.jaas.config": SECRET_MASK}
    assert "# privacy.pseudonym_key is set in the profile." in done.stdout.splitlines()

    # As it is, the printed profile is refused: it would connect with the mask as the password.
    as_file(shown, tmp_path / "shown.yaml")
    refused = riskstream("config", "show", "--config", "shown.yaml", "--set", "privacy.pseudonym_key=k", cwd=tmp_path)
    assert_one_line_failure(refused, 2, "kafka.properties.sasl.jaas.config", SECRET_MASK, "config show",
                            "RISKSTREAM_KAFKA__SASL_JAAS_CONFIG")
    # With the secrets given again, it is the same profile.
    shown["kafka"]["properties"] = secrets
    shown["privacy"]["pseudonym_key"] = "hunter2-pseudonyms"
    assert load_settings(as_file(shown, tmp_path / "again.yaml")) == load_settings(mine)


def test_config_show_names_the_secrets_the_environment_gives_without_their_values(tmp_path):
    environment = {**user_environment(), "RISKSTREAM_PSEUDONYM_KEY": "hunter2-environment",
                   "RISKSTREAM_KAFKA__SASL_PASSWORD": "hunter2-kafka"}
    done = subprocess.run([str(RISKSTREAM), "config", "show", "--config", KAFKA], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=60)
    shown_profile(done)
    assert "hunter2" not in done.stdout
    comments = [line for line in done.stdout.splitlines() if line.startswith("#")]
    assert "# RISKSTREAM_PSEUDONYM_KEY is set: the job pseudonymizes account_id with it." in comments
    assert any("RISKSTREAM_KAFKA__*" in line and "sasl.password" in line for line in comments), comments


def test_config_show_of_a_bad_profile_is_one_line(tmp_path):
    done = riskstream("config", "show", "--set", "model.learning_rate=-1", cwd=tmp_path)
    assert_one_line_failure(done, 2, "model.learning_rate", "greater than 0")


# ---------------------------------------------------------------- --dry-run


@pytest.fixture
def project(tmp_path):
    """A copy of the project beside tmp_path, whose build/ has the jars (stand-ins), whether or not
    `make jars` ran in this checkout."""
    return project_copy(tmp_path.parent / f"{tmp_path.name}-project")


@pytest.fixture
def transactions(tmp_path):
    """Three transactions in tmp_path/tx.jsonl (their content is not read by a dry run, only counted)."""
    path = tmp_path / "tx.jsonl"
    path.write_text("".join(json.dumps({"txn_id": f"t{n}"}) + "\n" for n in range(3)))
    return path


def test_run_dry_run_checks_the_profile_and_starts_nothing(tmp_path, project, transactions):
    out = tmp_path / "out" / "scores"
    out.mkdir(parents=True)
    (out / "scores-0-0.jsonl").write_text('{"txn_id": "t0"}\n')
    before = tree_bytes(tmp_path)
    done = riskstream("run", "--dry-run", "--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", "output.path=out",
                      cwd=tmp_path, project=project)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == [f"profile OK: {LOCAL}: 1 input file with 3 records, writes to {tmp_path / 'out'}; "
                                        "nothing started"]
    assert tree_bytes(tmp_path) == before  # no output moved aside, no log written


@pytest.mark.parametrize("setting, phrases", [
    ("source.paths=[missing.jsonl]", ["source.paths", "missing.jsonl", "does not exist"]),
    ("flink.jars=[mine.jar]", ["flink.jars", "mine.jar", "is not a file"]),
    ("model.learning_rate=0", ["model.learning_rate", "greater than 0"]),
])
@pytest.mark.parametrize("command", ["run", "submit"])
def test_dry_run_fails_in_one_line_as_the_command_would(tmp_path, project, transactions, command, setting, phrases):
    done = riskstream(command, "--dry-run", "--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", setting,
                      cwd=tmp_path, project=project)
    assert_one_line_failure(done, 2, *phrases)


def test_submit_dry_run_does_not_contact_the_cluster_and_checks_from(tmp_path, project, transactions):
    options = ["--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", "output.path=out",
               "--set", f"flink.rest_address={NOTHING_LISTENS}"]
    done = riskstream("submit", "--dry-run", *options, cwd=tmp_path, project=project)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == [f"profile OK: {LOCAL}: 1 input file with 3 records, writes to {tmp_path / 'out'}; "
                                        "nothing started"]
    missing = riskstream("submit", "--dry-run", *options, "--from", "savepoint-1", cwd=tmp_path, project=project)
    assert_one_line_failure(missing, 2, "submit --from", "savepoint-1", "does not exist")
    (tmp_path / "savepoint-1").mkdir()
    resumed = riskstream("submit", "--dry-run", *options, "--from", "savepoint-1", cwd=tmp_path, project=project)
    assert resumed.returncode == 0, resumed.stderr
    assert f", resuming from {tmp_path / 'savepoint-1'}; nothing started" in resumed.stdout


def test_a_kafka_dry_run_without_a_broker_names_the_address(tmp_path):
    done = riskstream("run", "--dry-run", "--config", KAFKA, "--set", f"kafka.bootstrap_servers={NOTHING_LISTENS}",
                      cwd=tmp_path, timeout_s=60)
    assert_one_line_failure(done, 3, NOTHING_LISTENS, "make kafka-up")


@pytest.mark.parametrize("command", ["run", "submit"])
def test_dry_run_is_in_the_help(tmp_path, command):
    text = " ".join(riskstream(command, "--help", cwd=tmp_path).stdout.split())
    assert "--dry-run only check the profile, inputs and jars" in text, text


@pytest.mark.parametrize("parallelism, phrases", [
    ("0", ["flink.parallelism", "greater than 0"]),
    ("129", ["flink.parallelism", "max_parallelism (128)"]),
])
def test_submit_parallelism_is_checked_as_flink_parallelism(tmp_path, project, transactions, parallelism, phrases):
    options = ["--config", LOCAL, "--set", "source.paths=[tx.jsonl]", "--set", f"flink.rest_address={NOTHING_LISTENS}"]
    done = riskstream("submit", "--dry-run", *options, "--parallelism", parallelism, cwd=tmp_path, project=project)
    assert_one_line_failure(done, 2, *phrases)
    fits = riskstream("submit", "--dry-run", *options, "--parallelism", "4", cwd=tmp_path, project=project)
    assert fits.returncode == 0 and fits.stdout.startswith("profile OK"), fits.stderr
