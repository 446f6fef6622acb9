"""Health checks of the docker-compose stack's services (docker-compose.yml), run by Docker inside
each container: `python -m streaming.ops.health kafka|jobmanager|taskmanager`. Exit 0 when the service
serves, else 1 with one line saying why. The profile is the container's (RISKSTREAM_PROFILE).

- kafka: the broker answers a metadata request at kafka.bootstrap_servers;
- jobmanager: the REST API at flink.rest_address answers;
- taskmanager: this container's TaskManager is registered with the JobManager (found by the
  address it announced, which `riskstream cluster taskmanager` sets to the container's).
"""

from __future__ import annotations

import socket
import sys

from streaming.config import DEFAULT_PROFILES, ConfigError, ServiceUnreachable, load_settings, profile_from_environment
from streaming.ops import kafka_tools, rest


def registered_here(taskmanagers: list[dict], address: str) -> bool:
    """Whether one of the REST API's TaskManagers (GET /taskmanagers) runs at `address` (an IP)."""
    return any(f"@{address}:" in manager.get("path", "") for manager in taskmanagers)


SERVICES = ("kafka", "jobmanager", "taskmanager")


def check(service: str) -> None:
    """Raises ConfigError, ServiceUnreachable or ClusterError (one line) unless `service` (one of
    SERVICES) serves."""
    settings = load_settings(profile_from_environment() or DEFAULT_PROFILES["cluster"])
    if service == "kafka":
        kafka_tools.show_client_log(False)
        kafka_tools.check_broker(settings)
    elif service == "jobmanager":
        rest.rest(settings.flink.rest_url, "GET", "/overview", timeout=3)
    elif service == "taskmanager":
        address = socket.gethostbyname(socket.gethostname())
        managers = rest.rest(settings.flink.rest_url, "GET", "/taskmanagers", timeout=3)["taskmanagers"]
        if not registered_here(managers, address):
            raise rest.ClusterError(f"no TaskManager at {address} is registered at {settings.flink.rest_url}")
    else:
        raise ConfigError(f"no health check for {service!r}; use {', '.join(SERVICES)}")


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1 or arguments[0] not in SERVICES:
        print(f"usage: python -m streaming.ops.health {'|'.join(SERVICES)}", file=sys.stderr)
        return 2
    try:
        check(arguments[0])
    except (ConfigError, ServiceUnreachable, rest.ClusterError) as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
