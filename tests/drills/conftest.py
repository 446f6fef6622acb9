"""Drills too long for `make test` (`make drill-global`): the integration tier's fixtures, reused."""

from tests.integration.conftest import kafka_isolation, second_taskmanager, session_cluster  # noqa: F401 (fixtures)
