"""Shared fixtures of the unit tier: no JVM, no pyflink."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from streaming.config import PSEUDONYM_KEY_ENV, Settings, load_settings
from streaming.config.from_settings import transaction_reader
from tests.records import VALID_RECORD
from udfs.cleaning import CleaningRules, MissingPolicy
from udfs.reading import TransactionReader

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_PROFILE = PROJECT / "conf" / "local.yaml"

TEST_KEY = b"unit-test-pseudonym-key"
CHANNELS = frozenset({"web", "pos", "atm", "mobile"})

# Hypothesis profiles of the property tests (marker `property`, tests/unit/test_properties.py).
# `unit`, the default (`make test`, `make unit`): the same examples on every run (derandomize: a
# seed fixed by each test's source), 300 per test, enough to catch each bug planted in
# docs/contracts.md ("How the contracts are tested") and about 12 s of CPU for the whole property
# suite; no example database, so runs do not depend on each other.
# `fuzz` (`make fuzz`, HYPOTHESIS_PROFILE=fuzz): FUZZ_EXAMPLES examples per test (default 5000),
# random, with failing examples kept in var/hypothesis and replayed first on the next run.
# Neither has a deadline: a record nested thousands of levels deep takes its time, on a busy
# machine too; the fixtures the tests use are pure (built once per test, not per example).
_NO_HEALTH_CHECKS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                     HealthCheck.large_base_example]
settings.register_profile("unit", derandomize=True, max_examples=300, database=None, deadline=None,
                          suppress_health_check=_NO_HEALTH_CHECKS, print_blob=True)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "5000")), deadline=None,
                          database=DirectoryBasedExampleDatabase(str(PROJECT / "var" / "hypothesis")),
                          suppress_health_check=_NO_HEALTH_CHECKS, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "unit"))


@pytest.fixture(autouse=True)
def built_jars(tmp_path_factory, monkeypatch) -> Path:
    """A build folder holding (empty) jars where `make jars` puts them, for every unit test: the
    unit tier runs before the jars are built (`make test` lints and runs it first), and the code it
    tests only checks that they are there (streaming.config.flink_options.job_jars)."""
    from streaming.config import flink_options

    build = tmp_path_factory.getbasetemp() / "build"
    (build / "flink-jars").mkdir(parents=True, exist_ok=True)
    (build / "riskstream-flink.jar").touch()
    (build / "flink-jars" / "flink-sql-connector-kafka-5.0.0-2.2.jar").touch()
    monkeypatch.setattr(flink_options, "BUILD", build)
    return build


@pytest.fixture
def record() -> dict[str, Any]:
    """A fresh deep copy of VALID_RECORD that a test may edit."""
    return copy.deepcopy(VALID_RECORD)


@pytest.fixture
def make_rules() -> Callable[..., CleaningRules]:
    def make(missing: dict[str, MissingPolicy] | None = None, max_record_bytes: int = 4096,
             default_currency: str = "USD") -> CleaningRules:
        return CleaningRules(pseudonym_key=TEST_KEY, channels=CHANNELS, default_currency=default_currency,
                             missing=missing or {}, max_record_bytes=max_record_bytes)
    return make


@pytest.fixture
def rules(make_rules) -> CleaningRules:
    return make_rules()


@pytest.fixture
def no_key_in_environment(monkeypatch):
    """The profile's pseudonym key is used, whatever the developer's shell exports."""
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)


@pytest.fixture
def local_settings(no_key_in_environment) -> Settings:
    return load_settings(LOCAL_PROFILE)


def reader_from_settings(settings: Settings) -> TransactionReader:
    """The TransactionReader the job builds from these settings."""
    return transaction_reader(settings)


@pytest.fixture
def local_reader(local_settings) -> TransactionReader:
    return reader_from_settings(local_settings)


def file_envelope(payload: bytes, line: int = 1, path: str = "/data/in.jsonl") -> str:
    """What the file source hands Python for one line: a source tag, a tab, the bytes as latin-1."""
    return f"file:{line}:{path}\t" + payload.decode("latin-1")


@pytest.fixture
def envelope() -> Callable[..., str]:
    return file_envelope
