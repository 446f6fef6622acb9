"""Static checks of the docker-compose stack's files: docker-compose.yml, the Dockerfile, .dockerignore,
and what they must agree with (the profiles in conf/, the CLI, streaming.ops.health, constraints.txt,
kafka/pom.xml, pyproject.toml).

Why static: CI (`make test`) has no Docker engine, so nothing there builds the image or starts the
stack; `make compose-test` does that for real, on a machine with Docker. These checks catch the drift
that would otherwise show only there, or only on a user's `docker compose up`: a command the CLI no
longer accepts, a profile that no longer loads, a file the image no longer gets, a port published on
every interface, a lock file that no longer satisfies pyproject.toml, a connector for another Flink.

Each check is a small function over parsed data that returns its problems (empty when all is well),
so that each one is also fed a broken example here, to show that it can fail.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import tomllib
import yaml
from docker.utils.build import exclude_paths
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from streaming.cli import parser
from streaming.config import PROFILE_ENV, ConfigError, ServiceUnreachable, load_settings
from streaming.ops import health, kafka_tools, local_cluster, rest

PROJECT = Path(__file__).resolve().parents[2]
# The image's working directory (the Dockerfile's WORKDIR), where the repository's files are.
IMAGE_ROOT = PurePosixPath("/opt/riskstream")
# The services `python -m streaming.ops.health` has a check for (its docstring).
HEALTH_CHECKS = ("kafka", "jobmanager", "taskmanager")
# What the stack publishes on this machine: (service, host port, container port).
EXPECTED_PORTS = {("kafka", 9092, 9092), ("jobmanager", 8081, 8081), ("jobmanager", 9249, 9249),
                  ("taskmanager", 9250, 9249)}
# The Flink processes whose Prometheus reporter the stack publishes.
PROMETHEUS_SERVICES = ("jobmanager", "taskmanager")
# riskstream's options that name a file it reads (argparse dests holding a Path).
INPUT_FILE_OPTIONS = ("config", "overrides", "file")
# Where the build stage puts the extra certificate authorities; none of it may reach the runtime image.
BUILD_CA = "docker/build-ca"
BUILD_CA_IN_IMAGE = ("/tmp/build-ca", "/usr/local/share/ca-certificates", "/etc/ssl")


# ---------------------------------------------------------------- reading the files


def compose_file() -> dict[str, Any]:
    """docker-compose.yml, parsed (PyYAML applies the `<<: *riskstream` merge keys)."""
    return yaml.safe_load((PROJECT / "docker-compose.yml").read_text(encoding="utf-8"))


def dockerfile() -> str:
    return (PROJECT / "Dockerfile").read_text(encoding="utf-8")


def dockerignore() -> str:
    return (PROJECT / ".dockerignore").read_text(encoding="utf-8")


def pyproject() -> dict[str, Any]:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment:`, given as a mapping or as a list of NAME=VALUE."""
    given = service.get("environment") or {}
    if isinstance(given, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in given)
    return {name: "" if value is None else str(value) for name, value in given.items()}


def interpolate(text: str) -> str:
    """Compose's variable substitution with nothing set: `${VAR:-default}` and `${VAR-default}` become
    the default, `${VAR}` and `$VAR` become empty, `$$` is a `$`."""
    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return match.group("default") or ""
    return re.sub(r"\$\$|\$\{[A-Za-z_]\w*(?::?-(?P<default>[^}]*))?\}|\$[A-Za-z_]\w*", substitute, text)


def command_line(command: str | list[Any]) -> list[str]:
    """A compose `command:` (a list, or a string split as a shell would) after substitution."""
    if isinstance(command, str):
        return shlex.split(interpolate(command))
    return [interpolate(str(argument)) for argument in command]


def healthcheck_command(test: str | list[str]) -> list[str]:
    """The command of a health check's `test:` (["CMD", ...], ["CMD-SHELL", "..."] or a string)."""
    if isinstance(test, str):
        return shlex.split(test)
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    return list(test[1:]) if test[0] == "CMD" else list(test)


def named_volumes(compose: dict[str, Any], service: dict[str, Any]) -> dict[str, str]:
    """A service's mounts of the compose file's named volumes: container path -> volume name."""
    declared = set(compose.get("volumes") or {})
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source"), volume.get("target")
        else:
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        if source in declared:
            mounts[target] = source
    return mounts


def in_image(path: str) -> PurePosixPath:
    """Where a path of a profile loaded here is in the image: under IMAGE_ROOT when in the project."""
    if Path(path).is_relative_to(PROJECT):
        return IMAGE_ROOT / Path(path).relative_to(PROJECT).as_posix()
    return PurePosixPath(path)


def looks_like_a_project_file(argument: str) -> bool:
    """A relative path with a folder in it, e.g. conf/flink/compose.yaml or kafka/kafka.sh."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)+/?", argument) is not None and not argument.startswith("..")


def properties(text: str) -> dict[str, str]:
    """A Java .properties file's key=value lines."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


# ---------------------------------------------------------------- 1. the profiles


def profiles_named(compose: dict[str, Any]) -> dict[str, str]:
    """Every profile the compose file names (RISKSTREAM_PROFILE values, `--config X` arguments),
    relative to the project, with the service that names it."""
    named = {}
    for name, service in compose["services"].items():
        if PROFILE_ENV in environment(service):
            named[environment(service)[PROFILE_ENV]] = name
        arguments = command_line(service.get("command") or [])
        for position, argument in enumerate(arguments):
            if argument == "--config" and position + 1 < len(arguments):
                named[arguments[position + 1]] = name
            elif argument.startswith("--config="):
                named[argument.split("=", 1)[1]] = name
    return named


def profile_load_problems(named: dict[str, str], root: Path) -> list[str]:
    """Each named profile that does not load with load_settings, with the reason."""
    problems = []
    for profile, service in sorted(named.items()):
        try:
            load_settings(root / profile)
        except ConfigError as error:
            problems.append(f"service {service}: profile {profile} does not load: {error}")
    return problems


def stack_profile_problems(compose: dict[str, Any], profile: Path) -> list[str]:
    """What is wrong with the stack's profile: it must extend conf/cluster.yaml, reach the broker and
    the JobManager by service name, and keep checkpoints and savepoints on a named volume that the
    JobManager and the TaskManager both mount at the same path."""
    problems = []
    raw = yaml.safe_load(profile.read_text(encoding="utf-8"))
    extends = raw.get("extends")
    if extends is None or (profile.parent / extends).resolve() != PROJECT / "conf" / "cluster.yaml":
        problems.append(f"{profile.name} extends {extends!r}, not conf/cluster.yaml (the session-cluster profile)")
    settings = load_settings(profile)
    services = compose["services"]
    for server in settings.kafka.bootstrap_servers.split(","):
        host = server.strip().rsplit(":", 1)[0]
        if host not in services:
            problems.append(f"kafka.bootstrap_servers: {host!r} (of {server.strip()}) is no service of the "
                            f"compose file")
    rest_host = settings.flink.rest_address.rsplit(":", 1)[0]
    if rest_host not in services:
        problems.append(f"flink.rest_address: {rest_host!r} is no service of the compose file")
    jobmanager = named_volumes(compose, services.get("jobmanager", {}))
    taskmanager = named_volumes(compose, services.get("taskmanager", {}))
    shared = [PurePosixPath(path) for path, volume in jobmanager.items() if taskmanager.get(path) == volume]
    for setting, directory in (("checkpointing.directory", settings.checkpointing.directory),
                               ("checkpointing.savepoint_directory", settings.checkpointing.savepoint_directory)):
        if directory is None or not any(in_image(directory).is_relative_to(mount) for mount in shared):
            problems.append(f"{setting}: {directory} is on no named volume that jobmanager and taskmanager both "
                            f"mount at the same path (shared mounts: {[str(mount) for mount in shared]})")
    return problems


def test_every_profile_the_stack_names_loads():
    named = profiles_named(compose_file())
    assert named, "docker-compose.yml names no profile (RISKSTREAM_PROFILE or --config)"
    problems = profile_load_problems(named, PROJECT)
    assert not problems, "\n".join(problems)


def test_a_profile_that_does_not_exist_is_reported(tmp_path):
    problems = profile_load_problems({"conf/missing.yaml": "submit"}, PROJECT)
    assert len(problems) == 1 and "conf/missing.yaml" in problems[0] and "submit" in problems[0], problems


def test_every_service_runs_with_the_stacks_profile():
    """The health checks and every riskstream command find the broker and the JobManager through it."""
    services = compose_file()["services"]
    without = sorted(name for name, service in services.items() if PROFILE_ENV not in environment(service))
    assert not without, f"services without {PROFILE_ENV} in their environment: {without}"


def test_the_stacks_profile_extends_the_cluster_profile_and_reaches_the_services_and_the_shared_volume():
    compose = compose_file()
    problems = stack_profile_problems(compose, PROJECT / "conf" / "compose.yaml")
    assert not problems, "\n".join(problems)


def test_a_profile_off_the_compose_network_or_the_shared_volume_is_reported(tmp_path):
    compose = compose_file()
    (tmp_path / "stack.yaml").write_text(
        f"extends: {PROJECT / 'conf' / 'kafka.yaml'}\n"
        "kafka: {bootstrap_servers: 'broker:29092'}\n"
        "checkpointing: {directory: /var/lib/elsewhere/checkpoints, savepoint_directory: /var/lib/riskstream/sp}\n"
        "flink: {rest_address: 'flink:8081'}\n")
    problems = "\n".join(stack_profile_problems(compose, tmp_path / "stack.yaml"))
    for phrase in ("not conf/cluster.yaml", "'broker'", "'flink'", "/var/lib/elsewhere/checkpoints"):
        assert phrase in problems, (phrase, problems)
    assert "/var/lib/riskstream/sp" not in problems, problems
    # The TaskManager mounting the volume elsewhere breaks checkpoints as much as not mounting it.
    compose["services"]["taskmanager"]["volumes"] = ["flink-state:/var/lib/flink"]
    problems = "\n".join(stack_profile_problems(compose, PROJECT / "conf" / "compose.yaml"))
    assert "checkpointing.directory" in problems and "checkpointing.savepoint_directory" in problems, problems


# ---------------------------------------------------------------- 2. the commands and health checks


def parse_riskstream(arguments: list[str], profile: str | None, monkeypatch) -> argparse.Namespace | str:
    """`riskstream ...` parsed by the CLI's own parser, built with RISKSTREAM_PROFILE as the service
    has it; argparse's error line instead when it does not parse."""
    if profile is None:
        monkeypatch.delenv(PROFILE_ENV, raising=False)
    else:
        monkeypatch.setenv(PROFILE_ENV, profile)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser().parse_args(arguments[1:])
    except SystemExit:
        return (errors.getvalue().strip().splitlines() or ["exited"])[-1]


def command_problems(services: dict[str, Any], root: Path, monkeypatch) -> list[str]:
    """Commands that cannot run: a riskstream command the CLI rejects or whose input files (--config,
    --overrides, --file) are missing, a project file named in any command that is missing, a
    project script run as the command that is not executable."""
    problems = []
    for name, service in services.items():
        if "command" not in service:
            continue
        arguments = command_line(service["command"])
        shown = " ".join(arguments)
        missing = {argument: argument for argument in arguments
                   if looks_like_a_project_file(argument) and not (root / argument).exists()}
        if arguments[0] == "riskstream":
            parsed = parse_riskstream(arguments, environment(service).get(PROFILE_ENV), monkeypatch)
            if isinstance(parsed, str):
                problems.append(f"service {name}: `{shown}` does not parse: {parsed}")
            else:  # also the files an option takes by default (--config from RISKSTREAM_PROFILE)
                missing.update({str(value): f"--{option} {value}" for option in INPUT_FILE_OPTIONS
                                if isinstance(value := getattr(parsed, option, None), Path)
                                and not (root / value).is_file()})
        problems += [f"service {name}: `{shown}`: {what} does not exist" for what in missing.values()]
        if looks_like_a_project_file(arguments[0]) and (root / arguments[0]).is_file():
            if not (root / arguments[0]).stat().st_mode & 0o111:
                problems.append(f"service {name}: {arguments[0]} is not executable")
    return problems


def test_every_command_of_the_stack_parses_and_finds_its_files(monkeypatch):
    problems = command_problems(compose_file()["services"], PROJECT, monkeypatch)
    assert not problems, "\n".join(problems)


def test_commands_the_cli_rejects_or_whose_files_are_missing_are_reported(monkeypatch):
    profile = {"environment": {PROFILE_ENV: "conf/compose.yaml"}}
    services = {
        "producer": {**profile, "command": ["riskstream", "produce", "--generate", "${N:-10}", "--colour", "red"]},
        "rate": {**profile, "command": ["riskstream", "produce", "--generate", "5", "--rate", "${PRODUCER_RATE}"]},
        "submit": {"command": ["riskstream", "submit"]},  # no profile from the environment: --config is required
        "jobmanager": {**profile,
                       "command": ["riskstream", "cluster", "jobmanager", "--overrides", "conf/flink/x.yaml"]},
        "kafka": {**profile, "command": ["kafka/kafka.sh", "serve", "conf/kafka/missing.properties"]},
        "readme": {**profile, "command": ["README.md"]},
        "topics": {"environment": {PROFILE_ENV: "conf/nope.yaml"}, "command": ["riskstream", "topics"]},
        "script": {**profile, "command": ["conf/compose.yaml"]},
    }
    problems = "\n".join(command_problems(services, PROJECT, monkeypatch))
    for phrase in ("producer", "unrecognized arguments: --colour red", "rate", "--rate: invalid float value: ''",
                   "service submit", "--config", "--overrides conf/flink/x.yaml does not exist",
                   "conf/kafka/missing.properties does not exist", "--config conf/nope.yaml does not exist",
                   "conf/compose.yaml is not executable"):
        assert phrase in problems, (phrase, problems)
    assert "readme" not in problems, problems  # not a project path with a folder: not checked
    assert problems.count("\n") == 6, problems  # one line each: x.yaml is not reported twice


def test_compose_substitution_takes_the_defaults():
    assert command_line(["--rate", "${PRODUCER_RATE:-500}", "${A-7}", "$$HOME", "${UNSET}"]) == \
        ["--rate", "500", "7", "$HOME", ""]
    assert command_line("riskstream produce --rate ${PRODUCER_RATE:-500}") == ["riskstream", "produce", "--rate", "500"]


def health_verdict(name: str, profile: str, monkeypatch, capsys) -> tuple[int, str]:
    """`python -m streaming.ops.health NAME`'s exit code and what it prints, run here with the service's
    profile. Nothing runs here, so the probes (broker metadata, REST API, own address) are replaced by
    ones that fail at once: a service the module checks ends in (1, "unhealthy: probe ... reached")."""
    def probe(what: str):
        def fail(*args, **kwargs):
            raise ServiceUnreachable(f"probe {what} reached")
        return fail
    monkeypatch.setenv(PROFILE_ENV, str(PROJECT / profile))
    monkeypatch.setattr(kafka_tools, "check_broker", probe("check_broker"))
    monkeypatch.setattr(rest, "rest", probe("rest"))
    monkeypatch.setattr(health.socket, "gethostbyname", lambda host: "127.0.0.1")
    code = health.main([name])
    return code, capsys.readouterr().err.strip()


def test_every_health_check_runs_a_check_the_health_module_has(monkeypatch, capsys):
    checked = 0
    for name, service in compose_file()["services"].items():
        if "healthcheck" not in service:
            continue
        command = healthcheck_command(service["healthcheck"]["test"])
        assert command[:3] == ["python", "-m", "streaming.ops.health"] and len(command) == 4, (name, command)
        assert command[3] in HEALTH_CHECKS, f"service {name}: health check {command[3]!r} is not one of {HEALTH_CHECKS}"
        code, verdict = health_verdict(command[3], environment(service)[PROFILE_ENV], monkeypatch, capsys)
        assert code == 1 and verdict.startswith("unhealthy: probe"), f"service {name}: exit {code}: {verdict}"
        checked += 1
    assert checked == len(HEALTH_CHECKS), f"{checked} health checks, expected {len(HEALTH_CHECKS)}"


def test_a_health_check_the_module_does_not_have_reaches_no_probe(monkeypatch, capsys):
    code, verdict = health_verdict("zookeeper", "conf/compose.yaml", monkeypatch, capsys)
    assert code != 0 and "probe" not in verdict, (code, verdict)


def test_the_brokers_advertised_listeners_are_the_profiles_and_the_published_address():
    compose = compose_file()
    kafka = compose["services"]["kafka"]
    config = command_line(kafka["command"])[2]
    advertised = properties((PROJECT / config).read_text(encoding="utf-8"))["advertised.listeners"]
    addresses = {listener.split("://", 1)[1] for listener in advertised.split(",")}
    bootstrap = load_settings(PROJECT / "conf" / "compose.yaml").kafka.bootstrap_servers
    assert bootstrap in addresses, f"{config}: advertised.listeners {advertised} lacks the profile's {bootstrap}"
    host_ports = {host for service, host, container in published_ports(compose) if service == "kafka"}
    assert {f"127.0.0.1:{port}" for port in host_ports} <= addresses, \
        f"{config}: advertised.listeners {advertised} lacks the published 127.0.0.1:{host_ports}"
    # kafka/kafka.sh keeps the broker's data under var/kafka: it must be on a volume to outlive the container.
    assert str(IMAGE_ROOT / "var" / "kafka") in named_volumes(compose, kafka), kafka.get("volumes")


def test_the_jobmanagers_rest_port_is_the_profiles_and_the_published_one():
    compose = compose_file()
    arguments = command_line(compose["services"]["jobmanager"]["command"])
    overrides = local_cluster.flink_overrides(PROJECT / arguments[arguments.index("--overrides") + 1])
    rest_address = load_settings(PROJECT / "conf" / "compose.yaml").flink.rest_address
    assert rest_address == f"{overrides['rest.address']}:{overrides['rest.port']}", (rest_address, overrides)
    assert ("jobmanager", int(overrides["rest.port"]), int(overrides["rest.port"])) in published_ports(compose)


# ---------------------------------------------------------------- 3. the Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined and
    comment lines (also those inside a continued instruction) left out."""
    result, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined = (pending + line).strip()
        pending = ""
        if joined:
            keyword, _, arguments = joined.partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, FROM first."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def copy_arguments(arguments: str) -> tuple[dict[str, str], list[str], str]:
    """A COPY or ADD's flags (--from=build -> {"from": "build"}), sources and destination."""
    words = json.loads(arguments) if arguments.startswith("[") else arguments.split()
    flags = {}
    while words and words[0].startswith("--"):
        flag, _, value = words.pop(0)[2:].partition("=")
        flags[flag] = value
    return flags, words[:-1], words[-1]


def context_copies(text: str) -> list[tuple[int, str]]:
    """Every COPY/ADD source taken from the build context (not from a stage): (stage index, path)."""
    copies = []
    for index, stage in enumerate(stages(text)):
        for keyword, arguments in stage:
            if keyword in ("COPY", "ADD"):
                flags, sources, _ = copy_arguments(arguments)
                if "from" not in flags:
                    copies += [(index, source) for source in sources]
    return copies


def normalized(path: str) -> str:
    """A context path as .dockerignore sees it: no ./, no trailing /; the context itself is '.'."""
    return str(PurePosixPath(path.removeprefix("./"))) if path not in ("", ".", "./") else "."


def build_context(root: Path, dockerignore_text: str) -> set[str]:
    """What `docker build` sends from `root` with this .dockerignore: every file and folder it keeps,
    as context paths. Docker's own Python SDK decides (docker.utils.build.exclude_paths, on the real
    files below `root`, the lines read as its build() reads .dockerignore), not a model of its rules."""
    patterns = [line.strip() for line in dockerignore_text.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    return {PurePosixPath(path).as_posix() for path in exclude_paths(str(root), patterns, dockerfile="Dockerfile")}


def copy_problems(dockerfile_text: str, dockerignore_text: str, root: Path) -> list[str]:
    """COPY/ADD sources from the context that do not exist, or that .dockerignore leaves out (a
    file, or a folder with every file in it)."""
    problems, context = [], build_context(root, dockerignore_text)
    for _, source in context_copies(dockerfile_text):
        path = normalized(source)
        found = ["."] if path == "." else [match.relative_to(root).as_posix() for match in root.glob(path)]
        if not found:
            problems.append(f"COPY {source}: not in the project")
        elif not any(match == "." or match in context and ((root / match).is_file() or any(
                kept.startswith(match + "/") and (root / kept).is_file() for kept in context)) for match in found):
            problems.append(f"COPY {source}: left out of the build context by .dockerignore")
    return problems


def base_image_problems(dockerfile_text: str) -> list[str]:
    """FROM images without an explicit tag (or digest), or tagged latest; earlier stages are fine."""
    problems, stage_names = [], set()
    for keyword, arguments in instructions(dockerfile_text):
        if keyword != "FROM":
            continue
        words = [word for word in arguments.split() if not word.startswith("--platform")]
        image = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            stage_names.add(words[2].lower())
        if image.lower() in stage_names:
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if "@" not in image and tag in ("", "latest"):
            problems.append(f"FROM {image}: pin a tag (not latest), as debian:bookworm-slim")
    return problems


def runtime_ca_problems(dockerfile_text: str) -> list[str]:
    """COPYs of the last (runtime) stage that would bring the build stage's certificate authorities in:
    docker/build-ca from the context (or a folder holding it), or where the build stage installed it."""
    problems = []
    for keyword, arguments in stages(dockerfile_text)[-1]:
        if keyword not in ("COPY", "ADD"):
            continue
        flags, sources, _ = copy_arguments(arguments)
        for source in sources:
            if "from" in flags:
                if any(PurePosixPath(source).is_relative_to(path) for path in BUILD_CA_IN_IMAGE):
                    problems.append(f"runtime stage: COPY --from={flags['from']} {source} brings the build CA in")
            elif normalized(source) == "." or PurePosixPath(BUILD_CA).is_relative_to(normalized(source)) \
                    or normalized(source).startswith(BUILD_CA):
                problems.append(f"runtime stage: COPY {source} brings {BUILD_CA} in")
    return problems


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    problems = copy_problems(dockerfile(), dockerignore(), PROJECT)
    assert context_copies(dockerfile()), "no COPY read from the Dockerfile"
    assert not problems, "\n".join(problems)


# A small Dockerfile of the project's shape, clean for every checker, for their broken examples.
EXAMPLE_DOCKERFILE = """\
# syntax and comment lines are left out
FROM debian:bookworm-slim AS base
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3
FROM base AS build
COPY docker/build-ca/ /tmp/build-ca/
COPY pyproject.toml constraints.txt ./
RUN python3 -m venv .venv \\
# a comment line inside a continued instruction, which Docker drops
 && .venv/bin/pip install --quiet -c constraints.txt -r /tmp/dependencies.txt setuptools
FROM base
WORKDIR /opt/riskstream
COPY --from=build /opt/riskstream/.venv .venv/
COPY ["conf", "conf/"]
"""
EXAMPLE_DOCKERIGNORE = ".git\nbuild\nvar\n*.egg-info\n**/__pycache__\n**/*.pyc\n"


def example_context(root: Path) -> Path:
    """A build context in `root` with the files EXAMPLE_DOCKERFILE copies, and some it must not."""
    for path in ("docker/build-ca/README.md", "pyproject.toml", "constraints.txt", "conf/compose.yaml",
                 "var/kafka/meta.properties", "build/riskstream-flink.jar", "conf/__pycache__/x.pyc"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("")
    return root


def test_the_example_dockerfile_is_read_as_docker_reads_it(tmp_path):
    assert [keyword for keyword, _ in instructions(EXAMPLE_DOCKERFILE)] == \
        ["FROM", "RUN", "FROM", "COPY", "COPY", "RUN", "FROM", "WORKDIR", "COPY", "COPY"]
    assert instructions(EXAMPLE_DOCKERFILE)[5][1].endswith("-r /tmp/dependencies.txt setuptools")
    assert context_copies(EXAMPLE_DOCKERFILE) == [(1, "docker/build-ca/"), (1, "pyproject.toml"),
                                                  (1, "constraints.txt"), (2, "conf")]
    assert copy_problems(EXAMPLE_DOCKERFILE, EXAMPLE_DOCKERIGNORE, example_context(tmp_path)) == []
    assert base_image_problems(EXAMPLE_DOCKERFILE) == runtime_ca_problems(EXAMPLE_DOCKERFILE) == []
    assert dockerfile_pin_problems(EXAMPLE_DOCKERFILE) == []


def test_a_copy_of_a_missing_or_ignored_file_is_reported(tmp_path):
    broken = EXAMPLE_DOCKERFILE + ("COPY var/ nowhere.txt ./\nCOPY --from=build /opt/x /opt/x\n"
                                   'COPY ["build/riskstream-flink.jar", "conf/__pycache__", "build/"]\n')
    assert copy_problems(broken, EXAMPLE_DOCKERIGNORE, example_context(tmp_path)) == [
        "COPY var/: left out of the build context by .dockerignore",
        "COPY nowhere.txt: not in the project",
        "COPY build/riskstream-flink.jar: left out of the build context by .dockerignore",
        "COPY conf/__pycache__: left out of the build context by .dockerignore"]


def test_the_build_context_holds_the_sources_and_nothing_made_or_run_here():
    """Docker's reading of the real .dockerignore on this checkout (with its .venv, build/, var/ and
    whatever __pycache__ folders the tests made): the sources go in, none of those."""
    context = build_context(PROJECT, dockerignore())
    top = {path.split("/")[0] for path in context}
    assert {"Dockerfile", "pyproject.toml", "constraints.txt", "Makefile", "conf", "kafka", "streaming", "udfs",
            "tests"} <= top, sorted(top)
    assert not top & {".git", ".ci", ".venv", ".venv-river", "build", "var", "out", "data", "bench", ".pytest_cache",
                   ".ruff_cache"}, \
        sorted(top)
    assert not [path for path in context if "__pycache__" in path.split("/") or path.endswith(".pyc")]
    assert not [path for path in context if path.endswith(".egg-info") or ".egg-info/" in path]


def test_every_base_image_has_a_pinned_tag():
    problems = base_image_problems(dockerfile())
    assert not problems, "\n".join(problems)


def test_an_untagged_or_latest_base_image_is_reported():
    problems = base_image_problems("FROM python AS one\nFROM debian:latest\nFROM one\nFROM registry:5000/img\n"
                                   "FROM --platform=linux/amd64 debian:bookworm-slim AS two\nFROM two\n"
                                   "FROM debian@sha256:0123\n")
    assert problems == ["FROM python: pin a tag (not latest), as debian:bookworm-slim",
                        "FROM debian:latest: pin a tag (not latest), as debian:bookworm-slim",
                        "FROM registry:5000/img: pin a tag (not latest), as debian:bookworm-slim"], problems


def test_the_build_ca_never_reaches_the_runtime_image():
    text = dockerfile()
    runtime = len(stages(text)) - 1
    assert any(source.startswith(BUILD_CA) for index, source in context_copies(text) if index < runtime), \
        "the build stage no longer copies docker/build-ca: is this check still about the right folder?"
    problems = runtime_ca_problems(text)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line", [
    "COPY docker/build-ca/ /tmp/build-ca/", "COPY docker docker/", "COPY . .",
    "COPY --from=build /usr/local/share/ca-certificates/ /usr/local/share/ca-certificates/",
])
def test_a_runtime_copy_of_the_build_ca_is_reported(line):
    assert len(runtime_ca_problems(EXAMPLE_DOCKERFILE + line + "\n")) == 1


def test_the_image_works_in_the_project_root_and_has_every_file_the_stack_names():
    """The compose file's paths are relative to WORKDIR, which must be the project's copy; each file
    it names must reach the runtime stage by a COPY of it or of a folder holding it."""
    text = dockerfile()
    runtime = stages(text)[-1]
    workdirs = [arguments for keyword, arguments in runtime if keyword == "WORKDIR"]
    assert workdirs and workdirs[-1] == str(IMAGE_ROOT), workdirs
    copied = [normalized(source) for index, source in context_copies(text) if index == len(stages(text)) - 1]
    compose = compose_file()
    named = set(profiles_named(compose))
    for service in compose["services"].values():
        named.update(argument for argument in command_line(service.get("command") or [])
                     if looks_like_a_project_file(argument))
    named.add("streaming/ops/health.py")  # the health checks' module
    missing = sorted(path for path in named
                     if not any(PurePosixPath(normalized(path)).is_relative_to(source) for source in copied))
    assert not missing, f"files the stack uses that the runtime stage does not copy: {missing} (copies: {copied})"


# ---------------------------------------------------------------- 4. the published ports


def published_ports(compose: dict[str, Any]) -> set[tuple[str, int, int]]:
    """(service, host port, container port) of every short-syntax 'IP:HOST:CONTAINER' port, with
    each port of a host range 'IP:FIRST-LAST:CONTAINER' (Docker gives each replica of a scaled
    service one of them)."""
    result = set()
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            parts = str(port).split("/")[0].split(":")
            first, _, last = parts[1].partition("-") if len(parts) == 3 else ("", "", "")
            if first.isdigit() and (last or first).isdigit() and parts[2].isdigit():
                result.update((name, host, int(parts[2])) for host in range(int(first), int(last or first) + 1))
    return result


def port_problems(compose: dict[str, Any]) -> list[str]:
    """Ports published on other interfaces than 127.0.0.1 (or on all of them, as a port without an
    address is), and services on the host's network, which publishes everything."""
    problems = []
    for name, service in compose["services"].items():
        if service.get("network_mode") == "host":
            problems.append(f"service {name}: network_mode host exposes every port it listens on")
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                if port.get("host_ip") != "127.0.0.1":
                    problems.append(f"service {name}: port {port} is not bound to 127.0.0.1 (host_ip)")
            elif not (str(port).startswith("127.0.0.1:") and str(port).count(":") == 2):
                problems.append(f"service {name}: port {port!r} is not 127.0.0.1:HOST:CONTAINER")
    return problems


def test_every_published_port_is_on_127_0_0_1_only():
    problems = port_problems(compose_file())
    assert not problems, "\n".join(problems)


def test_ports_on_other_interfaces_are_reported():
    compose = {"services": {"a": {"ports": ["9092:9092", "0.0.0.0:8081:8081", 9000, "127.0.0.1:1:1"]},
                            "b": {"ports": [{"target": 80, "published": 8080},
                                            {"target": 81, "published": 8181, "host_ip": "127.0.0.1"}]},
                            "c": {"network_mode": "host"}}}
    problems = port_problems(compose)
    assert len(problems) == 5 and all("127.0.0.1:1:1" not in problem for problem in problems), problems


def test_the_broker_and_the_flink_web_ui_are_published():
    published = published_ports(compose_file())
    assert EXPECTED_PORTS <= published, f"expected {sorted(EXPECTED_PORTS)}, published {sorted(published)}"


def prometheus_port_problems(compose: dict[str, Any], overrides: dict[str, str], local_ports: str) -> list[str]:
    """The Prometheus reporters' published ports against the port the containers' reporters listen on
    (`overrides`, conf/flink/compose.yaml) and the range the local session cluster's reporters take
    on this machine (`local_ports`, conf/flink/config.yaml): each Flink service publishes the
    reporter's port, on a host port of its own, outside the local cluster's range (whose reporters
    listen on every interface, so the two would clash)."""
    problems = []
    port = overrides.get("metrics.reporter.prom.port", "")
    if not port.isdigit():
        return [f"metrics.reporter.prom.port is {port!r} in the containers; it must be one port, to be published"]
    first, _, last = local_ports.partition("-")
    local = range(int(first), int(last or first) + 1)
    published: dict[str, set[int]] = {}
    for service, host, container in published_ports(compose):
        if container == int(port):
            published.setdefault(service, set()).add(host)
    for service in PROMETHEUS_SERVICES:
        if service not in published:
            problems.append(f"service {service}: its Prometheus reporter (port {port}) is not published")
        elif published[service] & set(local):
            problems.append(f"service {service}: host ports {sorted(published[service] & set(local))} are in the "
                            f"local cluster's reporter range {local_ports}")
    hosts = [published[service] for service in PROMETHEUS_SERVICES if service in published]
    if any(hosts[i] & hosts[j] for i in range(len(hosts)) for j in range(i + 1, len(hosts))):
        problems.append(f"the Flink services publish their reporters on the same host ports: {hosts}")
    return problems


# How many TaskManagers `docker compose up --scale taskmanager=N` can start: each publishes its
# Prometheus reporter on a host port of the service's range.
SCALABLE_TASKMANAGERS = 4


def scaling_problems(compose: dict[str, Any]) -> list[str]:
    """What stops `--scale taskmanager=SCALABLE_TASKMANAGERS`: a fixed container name, or fewer
    published host ports for one of its container ports than replicas."""
    service = compose["services"]["taskmanager"]
    problems = []
    if "container_name" in service:
        problems.append("service taskmanager: container_name makes a second replica clash with the first")
    hosts_by_container: dict[int, set[int]] = {}
    for name, host, container in published_ports(compose):
        if name == "taskmanager":
            hosts_by_container.setdefault(container, set()).add(host)
    for container, hosts in sorted(hosts_by_container.items()):
        if len(hosts) < SCALABLE_TASKMANAGERS:
            problems.append(f"service taskmanager: container port {container} has {len(hosts)} host ports "
                            f"for {SCALABLE_TASKMANAGERS} replicas (publish a range, 127.0.0.1:FIRST-LAST:{container})")
    return problems


def test_the_taskmanager_service_scales():
    problems = scaling_problems(compose_file())
    assert not problems, "\n".join(problems)


def test_a_fixed_port_or_container_name_that_stops_scaling_is_reported():
    def stack(**taskmanager: Any) -> dict[str, Any]:
        return {"services": {"taskmanager": taskmanager}}

    assert scaling_problems(stack(ports=["127.0.0.1:9250-9259:9249"])) == []
    assert len(scaling_problems(stack(ports=["127.0.0.1:9250:9249"]))) == 1
    assert len(scaling_problems(stack(ports=["127.0.0.1:9250-9251:9249"], container_name="tm"))) == 2


def test_the_prometheus_reporters_are_published_on_ports_of_their_own():
    compose = compose_file()
    arguments = command_line(compose["services"]["jobmanager"]["command"])
    overrides = local_cluster.flink_overrides(PROJECT / arguments[arguments.index("--overrides") + 1])
    config = yaml.safe_load((PROJECT / "conf" / "flink" / "config.yaml").read_text(encoding="utf-8"))
    local_ports = str(config["metrics"]["reporter"]["prom"]["port"])
    problems = prometheus_port_problems(compose, overrides, local_ports)
    assert not problems, "\n".join(problems)


def test_unpublished_shared_or_clashing_prometheus_ports_are_reported():
    def stack(jobmanager: list[str], taskmanager: list[str]) -> dict[str, Any]:
        return {"services": {"jobmanager": {"ports": jobmanager}, "taskmanager": {"ports": taskmanager}}}

    overrides = {"metrics.reporter.prom.port": "9249"}
    assert prometheus_port_problems(stack(["127.0.0.1:9249:9249"], ["127.0.0.1:9250:9249"]), overrides,
                                    "19249-19260") == []
    assert len(prometheus_port_problems(stack(["127.0.0.1:9249:9249"], []), overrides, "19249-19260")) == 1
    assert len(prometheus_port_problems(stack(["127.0.0.1:9249:9249"], ["127.0.0.1:9249:9249"]), overrides,
                                        "19249-19260")) == 1
    assert len(prometheus_port_problems(stack(["127.0.0.1:9249:9249"], ["127.0.0.1:9250:9249"]), overrides,
                                        "9249-9260")) == 2
    assert len(prometheus_port_problems(stack([], []), {"metrics.reporter.prom.port": "9249-9250"}, "1")) == 1
    assert prometheus_port_problems(stack(["127.0.0.1:9249:9249"], ["127.0.0.1:9250-9259:9249"]), overrides,
                                    "19249-19260") == []
    assert len(prometheus_port_problems(stack(["127.0.0.1:9249:9249"], ["127.0.0.1:9240-9250:9249"]), overrides,
                                        "19249-19260")) == 1


# ---------------------------------------------------------------- 5. the versions


def pins(constraints_text: str) -> tuple[dict[str, str], list[str]]:
    """constraints.txt's name==version pins by canonical name, and its problems (a line that is no
    exact pin, a package pinned twice)."""
    result, problems = {}, []
    for line in constraints_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match is None:
            problems.append(f"constraints.txt: {line!r} is not name==version")
            continue
        name = canonicalize_name(match.group(1))
        if name in result:
            problems.append(f"constraints.txt: {name} is pinned twice")
        result[name] = match.group(2)
    return result, problems


def requirement_problems(requirements: list[str], pinned: dict[str, str], where: str) -> list[str]:
    """Requirements without a pin in constraints.txt, or whose pin their specifier excludes."""
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name not in pinned:
            problems.append(f"{where}: {text} has no pin in constraints.txt")
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            problems.append(f"{where}: {text} is not satisfied by constraints.txt's {name}=={pinned[name]}")
    return problems


def connector_version(pom_text: str) -> str:
    """kafka/pom.xml's flink.kafka.connector.version property (e.g. 5.0.0-2.2)."""
    project = ElementTree.fromstring(pom_text)
    namespace = project.tag.partition("}")[0] + "}" if project.tag.startswith("{") else ""
    properties = project.find(f"{namespace}properties")
    assert properties is not None, "kafka/pom.xml has no <properties>"
    values = {child.tag.removeprefix(namespace): (child.text or "").strip() for child in properties}
    assert "flink.kafka.connector.version" in values, f"kafka/pom.xml properties: {sorted(values)}"
    return values["flink.kafka.connector.version"]


def flink_version_problems(pinned: str, connector: str, pyflink: str) -> list[str]:
    """Whether the pinned apache-flink, the connector's Flink suffix and PyFlink's Flink agree (major.minor)."""
    minor = "{0.major}.{0.minor}".format
    pinned_minor = minor(Version(pinned))
    problems = []
    if connector.rpartition("-")[2] != pinned_minor:
        problems.append(f"kafka/pom.xml flink.kafka.connector.version {connector} is for Flink "
                        f"{connector.rpartition('-')[2]}, constraints.txt pins apache-flink=={pinned}")
    if minor(Version(pyflink)) != pinned_minor:
        problems.append(f"the installed PyFlink is Flink {pyflink}, constraints.txt pins apache-flink=={pinned} "
                        f"(run make to reinstall .venv)")
    return problems


def pyflink_version() -> str:
    """The Flink version PyFlink reports, asked in another process (the unit tier imports no pyflink)."""
    return subprocess.run([sys.executable, "-c", "import pyflink.version; print(pyflink.version.__version__)"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def dockerfile_pin_problems(dockerfile_text: str) -> list[str]:
    """RUN lines that pin versions themselves (==, a versioned .jar) or install Python packages
    without constraints.txt: versions come from constraints.txt and kafka/pom.xml only."""
    problems = []
    for keyword, arguments in instructions(dockerfile_text):
        if keyword != "RUN":
            continue
        if "==" in arguments:
            problems.append(f"RUN pins a version with ==: {arguments[:120]}")
        if re.search(r"\d+\.\d+[\w.-]*\.jar\b", arguments):
            problems.append(f"RUN names a versioned jar: {arguments[:120]}")
        for install in re.findall(r"pip3? install[^&;|]*", arguments):
            if "-c constraints.txt" not in install and "--no-index" not in install:
                problems.append(f"RUN installs packages without -c constraints.txt: {install.strip()}")
    return problems


def test_the_constraints_are_one_exact_pin_per_package():
    _, problems = pins((PROJECT / "constraints.txt").read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_a_constraints_line_that_is_no_pin_or_a_second_pin_is_reported():
    pinned, problems = pins("# comment\nnumpy==2.1.3\nNumPy==2.2.0\npandas>=2\nruamel.yaml==0.19.1\n")
    assert problems == ["constraints.txt: numpy is pinned twice", "constraints.txt: 'pandas>=2' is not name==version"]
    assert pinned == {"numpy": "2.2.0", "ruamel-yaml": "0.19.1"}


def test_flink_is_the_same_minor_version_in_the_lock_file_the_connector_and_pyflink():
    pinned, _ = pins((PROJECT / "constraints.txt").read_text(encoding="utf-8"))
    assert pinned.get("apache-flink-libraries") == pinned["apache-flink"], \
        "apache-flink and apache-flink-libraries must be pinned to the same version"
    connector = connector_version((PROJECT / "kafka" / "pom.xml").read_text(encoding="utf-8"))
    problems = flink_version_problems(pinned["apache-flink"], connector, pyflink_version())
    assert not problems, "\n".join(problems)


def test_the_java_builds_own_versions_are_the_pinned_flink_and_kafka_poms_connector():
    """jvm/pom.xml's defaults, for `mvn` run by hand (make passes the installed PyFlink's version and
    kafka/pom.xml's connector version): the same, so both ways build against the same Flink."""
    pinned, _ = pins((PROJECT / "constraints.txt").read_text(encoding="utf-8"))
    jvm_pom = (PROJECT / "jvm" / "pom.xml").read_text(encoding="utf-8")
    project = ElementTree.fromstring(jvm_pom)
    namespace = project.tag.partition("}")[0] + "}"
    assert project.findtext(f"{namespace}properties/{namespace}flink.version") == pinned["apache-flink"]
    assert connector_version(jvm_pom) == connector_version((PROJECT / "kafka" / "pom.xml").read_text(encoding="utf-8"))


def test_a_connector_or_pyflink_for_another_flink_is_reported():
    pom = (PROJECT / "kafka" / "pom.xml").read_text(encoding="utf-8")
    old_pom = re.sub(r"<flink.kafka.connector.version>[^<]*<", "<flink.kafka.connector.version>4.0.0-2.0<", pom)
    assert connector_version(old_pom) == "4.0.0-2.0"
    assert flink_version_problems("2.2.1", "4.0.0-2.0", "2.2.0") == [
        "kafka/pom.xml flink.kafka.connector.version 4.0.0-2.0 is for Flink 2.0, "
        "constraints.txt pins apache-flink==2.2.1"]
    assert len(flink_version_problems("2.2.1", "5.0.0-2.2", "2.1.1")) == 1


def test_every_dependency_in_pyproject_has_a_pin_that_satisfies_it():
    project = pyproject()
    pinned, _ = pins((PROJECT / "constraints.txt").read_text(encoding="utf-8"))
    problems = requirement_problems(project["project"]["dependencies"], pinned, "project.dependencies")
    for extra, requirements in project["project"].get("optional-dependencies", {}).items():
        problems += requirement_problems(requirements, pinned, f"optional-dependencies.{extra}")
    # The image installs the project offline with --no-build-isolation: the pinned setuptools builds it.
    assert "setuptools" in pinned, "constraints.txt must pin setuptools (the image's offline editable install)"
    problems += requirement_problems(project["build-system"]["requires"], pinned, "build-system.requires")
    assert not problems, "\n".join(problems)


def test_a_dependency_without_a_pin_or_with_a_pin_it_excludes_is_reported():
    problems = requirement_problems(["apache_flink>=2.3", "PyYAML>=6", "left-pad>=1"],
                                    {"apache-flink": "2.2.1", "pyyaml": "6.0.4"}, "project.dependencies")
    assert problems == ["project.dependencies: apache_flink>=2.3 is not satisfied by constraints.txt's "
                        "apache-flink==2.2.1", "project.dependencies: left-pad>=1 has no pin in constraints.txt"]


def test_the_stacks_image_is_tagged_with_the_project_version():
    version = pyproject()["project"]["version"]
    images = {name: service.get("image") for name, service in compose_file()["services"].items()}
    wrong = {name: image for name, image in images.items() if image != f"riskstream:{version}"}
    assert not wrong, f"pyproject.toml's version is {version}; services with another image: {wrong}"


def test_the_dockerfile_takes_every_version_from_the_lock_file_and_the_pom():
    problems = dockerfile_pin_problems(dockerfile())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line", [
    "RUN .venv/bin/pip install -c constraints.txt apache-flink==2.2.1",
    "RUN curl -fsSLO https://repo1.maven.org/flink-sql-connector-kafka-4.0.0-2.0.jar",
    "RUN .venv/bin/pip install --quiet requests && true",
])
def test_a_version_pinned_in_the_dockerfile_is_reported(line):
    assert len(dockerfile_pin_problems(EXAMPLE_DOCKERFILE + line + "\n")) == 1


# ---------------------------------------------------------------- 6. the start order


def start_order_problems(compose: dict[str, Any]) -> list[str]:
    """depends_on entries that do not wait for what they need: without a condition, on a service that
    does not exist or that `up` does not start (one in a compose profile), on the health of a service
    without a health check, or on the completion of a service that is restarted."""
    problems = []
    services = compose["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            problems.append(f"service {name}: depends_on {depends_on} has no conditions")
            continue
        for target, how in depends_on.items():
            condition = (how or {}).get("condition")
            if target not in services:
                problems.append(f"service {name}: depends on {target}, which does not exist")
                continue
            if services[target].get("profiles") and not service.get("profiles"):
                problems.append(f"service {name}: depends on {target}, which `up` does not start (profiles)")
            if condition == "service_healthy" and "healthcheck" not in services[target]:
                problems.append(f"service {name}: waits for {target} to be healthy, but it has no healthcheck")
            elif condition == "service_completed_successfully" and services[target].get("restart", "no") != "no":
                problems.append(f"service {name}: waits for {target} to complete, but it is restarted")
            elif condition not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"service {name}: depends on {target} with condition {condition!r}")
    return problems


def test_the_services_wait_for_what_they_need():
    problems = start_order_problems(compose_file())
    assert not problems, "\n".join(problems)


def test_dependencies_that_do_not_wait_are_reported():
    compose = {"services": {
        "kafka": {"restart": "unless-stopped"}, "tools": {"profiles": ["tools"]},
        "a": {"depends_on": ["kafka"]},
        "b": {"depends_on": {"nowhere": {"condition": "service_healthy"}}},
        "c": {"depends_on": {"kafka": {"condition": "service_healthy"}}},
        "d": {"depends_on": {"kafka": {"condition": "service_completed_successfully"}}},
        "e": {"depends_on": {"kafka": {"condition": "service_started"}, "tools": {"condition": "service_healthy"}}},
    }}
    problems = start_order_problems(compose)
    assert [problem.split(":")[0] for problem in problems] == \
        ["service a", "service b", "service c", "service d", "service e", "service e", "service e"], problems


def test_the_services_that_need_a_health_check_have_one():
    services = compose_file()["services"]
    lacking = [name for name in HEALTH_CHECKS if "test" not in (services[name].get("healthcheck") or {})]
    assert not lacking, f"services without a health check: {lacking}"


def test_the_job_is_submitted_once_the_topics_exist_and_the_cluster_is_healthy():
    assert compose_file()["services"]["submit"]["depends_on"] == {
        "topics": {"condition": "service_completed_successfully"},
        "jobmanager": {"condition": "service_healthy"},
        "taskmanager": {"condition": "service_healthy"},
    }


def test_up_starts_every_service_but_the_tools():
    services = compose_file()["services"]
    assert services["tools"].get("profiles"), "the tools service must be in a compose profile, so `up` skips it"
    in_profiles = sorted(name for name, service in services.items() if service.get("profiles") and name != "tools")
    assert not in_profiles, f"services `up` would not start: {in_profiles}"


# ---------------------------------------------------------------- 7. docker-compose itself


# The Compose Specification's JSON schema, which `docker compose` validates a file against before it
# reads it (compose-go), copied from github.com/compose-spec/compose-spec, schema/compose-spec.json
# at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6 (2026-06-23; Apache-2.0). CI has no docker
# compose (`make compose-test` runs the real one, on a machine with Docker): this is what it checks first.
COMPOSE_SCHEMA = PROJECT / "tests" / "fixtures" / "compose-spec.json"


def compose_schema_problems(compose: dict[str, Any]) -> list[str]:
    """Where `compose` (parsed, after substitution) breaks the Compose Specification's schema."""
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8")))
    return sorted(f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
                  for error in validator.iter_errors(compose))


def test_the_compose_file_follows_the_compose_specification():
    compose = yaml.safe_load(interpolate((PROJECT / "docker-compose.yml").read_text(encoding="utf-8")))
    problems = compose_schema_problems(compose)
    assert not problems, "\n".join(problems)


def test_a_compose_file_the_specification_rejects_is_reported():
    compose = yaml.safe_load(interpolate((PROJECT / "docker-compose.yml").read_text(encoding="utf-8")))
    compose["services"]["kafka"]["restart_policy"] = "always"  # `restart:` is the key
    compose["services"]["submit"]["depends_on"]["topics"]["condition"] = "service_done"
    compose["volumes"] = ["state"]  # a mapping of names
    problems = compose_schema_problems(compose)
    assert len(problems) == 3, problems
    assert problems[0].startswith("services.kafka: 'restart_policy' does not match any of the regexes"), problems
    assert problems[1].startswith("services.submit.depends_on: "), problems
    assert problems[2].startswith("volumes: ['state'] is not of type 'object'"), problems
