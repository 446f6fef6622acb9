"""The docker-compose stack's health checks (streaming/ops/health.py), without Docker, a broker or a
cluster: which REST entry is this container's TaskManager, and `python -m streaming.ops.health` run as
Docker runs it, against addresses where nothing answers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streaming.config import PROFILE_ENV
from streaming.ops.health import registered_here
from tests.cli import NOTHING_LISTENS, PROJECT, assert_one_line_failure, user_environment

CLUSTER = PROJECT / "conf" / "cluster.yaml"


def taskmanager(address: str, port: int = 6122, index: int = 0) -> dict:
    """One entry of the REST API's GET /taskmanagers, as Flink 1.19 (Pekko) reports it."""
    return {"id": f"{address}:{port}-8f3c1a", "path": f"pekko.tcp://flink@{address}:{port}/user/rpc/taskmanager_{index}",
            "dataPort": 41235, "jmxPort": -1, "slotsNumber": 1, "freeSlots": 0}


@pytest.mark.parametrize("managers, address, expected", [
    ([taskmanager("172.18.0.5")], "172.18.0.5", True),
    ([taskmanager("172.18.0.6"), taskmanager("172.18.0.5", 41234, 1)], "172.18.0.5", True),  # any port, any index
    ([taskmanager("172.18.0.55")], "172.18.0.5", False),  # a longer address that starts with this one
    ([taskmanager("172.18.0.5")], "172.18.0.55", False),
    ([taskmanager("172.18.0.5")], "72.18.0.5", False),  # a longer address that ends with this one
    ([taskmanager("172.18.0.6")], "172.18.0.5", False),
    ([], "172.18.0.5", False),  # none registered yet
    ([{"id": "172.18.0.5:6122-8f3c1a"}], "172.18.0.5", False),  # an entry without a path
])
def test_registered_here_finds_this_containers_taskmanager_by_its_exact_address(managers, address, expected):
    assert registered_here(managers, address) is expected


def health(*arguments: str, profile: str | None, cwd, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """`python -m streaming.ops.health arguments...` in `cwd`, with RISKSTREAM_PROFILE set to `profile`
    (None: unset, so the cluster profile)."""
    environment = {name: value for name, value in user_environment().items() if name != PROFILE_ENV}
    if profile is not None:
        environment[PROFILE_ENV] = profile
    return subprocess.run([sys.executable, "-m", "streaming.ops.health", *arguments], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture
def nothing_answers(tmp_path):
    """A profile (extending conf/cluster.yaml) whose broker and REST API are where nothing listens."""
    profile = tmp_path / "down.yaml"
    profile.write_text(f"extends: {CLUSTER}\nkafka:\n  bootstrap_servers: {NOTHING_LISTENS}\n"
                       f"flink:\n  rest_address: {NOTHING_LISTENS}\n")
    return str(profile)


@pytest.mark.parametrize("arguments", [[], ["jobmanager", "taskmanager"], ["zookeeper"]])
def test_health_without_exactly_one_known_service_prints_its_usage(tmp_path, arguments):
    done = health(*arguments, profile=None, cwd=tmp_path)
    assert_one_line_failure(done, 2, "usage: python -m streaming.ops.health kafka|jobmanager|taskmanager")
    assert done.stdout == ""


@pytest.mark.parametrize("service", ["jobmanager", "taskmanager"])
def test_health_of_the_cluster_where_nothing_answers_is_unhealthy_in_one_line(tmp_path, nothing_answers, service):
    done = health(service, profile=nothing_answers, cwd=tmp_path)
    line = assert_one_line_failure(done, 1, f"no Flink cluster answers at http://{NOTHING_LISTENS}")
    assert line.startswith("unhealthy: ")
    assert done.stdout == ""


def test_health_of_kafka_where_nothing_answers_is_unhealthy_in_one_line(tmp_path, nothing_answers):
    done = health("kafka", profile=nothing_answers, cwd=tmp_path)
    line = assert_one_line_failure(done, 1, f"no Kafka broker answers at {NOTHING_LISTENS}")
    assert line.startswith("unhealthy: ")


def test_health_reads_the_profile_named_by_riskstream_profile(tmp_path):
    """A profile that does not load is what RISKSTREAM_PROFILE names, so the check reads it."""
    profile = tmp_path / "broken.yaml"
    profile.write_text("flink: [unclosed\n")
    done = health("jobmanager", profile=str(profile), cwd=tmp_path)
    line = assert_one_line_failure(done, 1, f"config file {profile}", "invalid YAML")
    assert line.startswith("unhealthy: ")
