"""Profile loading and validation (streaming/config/) and the CLI's non-Flink paths (streaming/cli/)."""

from __future__ import annotations

import copy
import pickle
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from streaming.cli import main
from streaming.config import PSEUDONYM_KEY_ENV, ConfigError, Settings, load_settings
from streaming.config.from_settings import model_scorer, transaction_reader
from udfs.generator import GeneratorSettings, generate
from udfs.model import AdaGrad, Ftrl, Sgd

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_PROFILE = PROJECT / "conf" / "local.yaml"


@pytest.fixture
def profile(tmp_path, no_key_in_environment):
    """Writes the local profile, edited by `edit(raw)`, into tmp_path and returns its path."""
    def write(edit=None, name="profile.yaml") -> Path:
        raw = yaml.safe_load(LOCAL_PROFILE.read_text(encoding="utf-8"))
        if edit is not None:
            edit(raw)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        return path
    return write


def config_error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, list(overrides))
    return str(info.value)


# ---------------------------------------------------------------- the local profile


def test_without_the_environment_variable_the_profiles_own_pseudonym_key_is_used(local_settings):
    profile = yaml.safe_load(LOCAL_PROFILE.read_text(encoding="utf-8"))
    assert local_settings.pseudonym_key() == profile["privacy"]["pseudonym_key"].encode("utf-8")


def test_the_shipped_profile_points_into_the_project_from_any_folder(tmp_path, monkeypatch, no_key_in_environment):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(LOCAL_PROFILE)
    assert settings.source.paths == (str(PROJECT / "data" / "sample.jsonl"),)
    assert settings.output.path == str(PROJECT / "out" / "local")
    assert settings.checkpointing.directory == str(PROJECT / "var" / "checkpoints")


def test_profile_paths_resolve_against_each_profiles_folder_and_overrides_against_the_current_one(
        tmp_path, monkeypatch, no_key_in_environment):
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "base.yaml").write_text(f"extends: {LOCAL_PROFILE}\nsource:\n  paths: [in/a.jsonl]\n")
    (tmp_path / "me").mkdir()
    (tmp_path / "me" / "mine.yaml").write_text("extends: ../team/base.yaml\noutput:\n  path: results\n"
                                               "flink:\n  jars: [lib/udf.jar]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(tmp_path / "me" / "mine.yaml")
    assert settings.source.paths == (str(tmp_path / "team" / "in" / "a.jsonl"),)
    assert settings.output.path == str(tmp_path / "me" / "results")
    assert settings.flink.jars == (str(tmp_path / "me" / "lib" / "udf.jar"),)
    overridden = load_settings(tmp_path / "me" / "mine.yaml", ["source.paths=[b.jsonl, /abs/c.jsonl]",
                                                               "output.path=here"])
    assert overridden.source.paths == (str(elsewhere / "b.jsonl"), "/abs/c.jsonl")
    assert overridden.output.path == str(elsewhere / "here")


# A relative value of each path setting, in a profile's YAML, and where it ends up in Settings.
PATH_VALUES = {
    ("source", "paths"): ("source:\n  paths: [in/a.jsonl]\n", lambda s: s.source.paths[0]),
    ("source", "directory"): ("source:\n  kind: directory\n  directory: in\n", lambda s: s.source.directory),
    ("labels", "source", "paths"): ("labels:\n  source:\n    kind: files\n    paths: [in/lab.jsonl]\n",
                                    lambda s: s.labels.source.paths[0]),
    ("labels", "source", "directory"): ("labels:\n  source:\n    kind: directory\n    directory: in\n",
                                        lambda s: s.labels.source.directory),
    ("output", "path"): ("output:\n  path: in\n", lambda s: s.output.path),
    ("checkpointing", "directory"): ("checkpointing:\n  directory: in\n", lambda s: s.checkpointing.directory),
    ("checkpointing", "savepoint_directory"): ("checkpointing:\n  savepoint_directory: in\n",
                                               lambda s: s.checkpointing.savepoint_directory),
    ("flink", "jars"): ("flink:\n  jars: [in/lib.jar]\n", lambda s: s.flink.jars[0]),
}


@pytest.mark.parametrize("place", PATH_VALUES, ids=".".join)
def test_every_path_setting_resolves_against_its_profiles_folder_and_with_set_against_the_current_one(
        place, tmp_path, monkeypatch, no_key_in_environment):
    yaml_text, value_of = PATH_VALUES[place]
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "mine.yaml").write_text(f"extends: {LOCAL_PROFILE}\n{yaml_text}")
    monkeypatch.chdir(tmp_path)
    relative = value_of(load_settings(tmp_path / "team" / "mine.yaml"))
    assert relative.startswith(str(tmp_path / "team" / "in")), relative
    # The same section given with --set: its paths resolve against the current folder.
    section = yaml.safe_load(yaml_text)
    for name in place[:-2]:
        section = section[name]
    with_set = [f"{'.'.join(place[:-1])}={yaml.safe_dump(section[place[-2]], default_flow_style=True).strip()}"]
    overridden = value_of(load_settings(tmp_path / "team" / "mine.yaml", with_set))
    assert overridden.startswith(str(tmp_path / "in")), (with_set, overridden)


def test_every_path_valued_setting_is_resolved_as_a_path():
    """Every setting the model names as a path (path, paths, directory, *_directory, jars) is in
    PATH_SETTINGS, and so resolves against its profile's folder."""
    from pydantic import BaseModel

    from streaming.config.loading import PATH_SETTINGS

    def places(section, above=()):
        for name, info in section.model_fields.items():
            place = (*above, info.alias or name)
            kinds = (info.annotation, *getattr(info.annotation, "__args__", ()))
            inner = next((kind for kind in kinds if isinstance(kind, type) and issubclass(kind, BaseModel)), None)
            if inner is not None:
                yield from places(inner, place)
            else:
                yield place

    named_as_paths = {place for place in places(Settings)
                      if place[-1] in ("path", "paths", "directory", "jars") or place[-1].endswith("_directory")}
    assert named_as_paths == set(PATH_SETTINGS) == set(PATH_VALUES)


def test_the_job_gets_the_projects_jars_and_names_a_missing_one(tmp_path, monkeypatch, local_settings):
    from streaming.config import flink_options

    kafka = load_settings(PROJECT / "conf" / "kafka.yaml")
    assert [jar.name for jar in flink_options.job_jars(local_settings)] == ["riskstream-flink.jar"]
    names = [jar.name for jar in flink_options.job_jars(kafka)]
    assert names[0] == "riskstream-flink.jar"
    assert names[1].startswith("flink-sql-connector-kafka-") and len(names) == 2
    monkeypatch.setattr(flink_options, "BUILD", tmp_path / "build")
    # The Makefile's targets: `make jar` builds the project's jar, `make jars` also the Kafka connector.
    with pytest.raises(ConfigError, match=r"riskstream-flink\.jar is missing; build it with `make jar` in "):
        flink_options.job_jars(local_settings)
    with pytest.raises(ConfigError, match=r"riskstream-flink\.jar is missing; build it with `make jars` in "):
        flink_options.job_jars(kafka)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "riskstream-flink.jar").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"flink-sql-connector-kafka-\*\.jar is missing; build it with `make jars`"):
        flink_options.job_jars(kafka)


@pytest.mark.parametrize("section, field, value", [
    (None, "model", None), ("model", "learning_rate", 0.5), ("kafka", "partitions", 9), ("source", "paths", ("x",)),
])
def test_assigning_a_setting_is_refused_and_changes_nothing(local_settings, section, field, value):
    target = local_settings if section is None else getattr(local_settings, section)
    before = local_settings.model_dump()
    with pytest.raises(ValidationError) as info:
        setattr(target, field, value)
    assert [(error["type"], error["loc"]) for error in info.value.errors()] == [("frozen_instance", (field,))]
    assert local_settings.model_dump() == before


def test_the_labels_profile_learns_from_the_labels_topic_with_state_in_rocksdb(no_key_in_environment):
    settings = load_settings(PROJECT / "conf" / "labels.yaml")
    assert (settings.labels.mode, settings.labels.source.kind, settings.kafka.labels_topic) == ("stream", "kafka", "labels")
    assert settings.labels.ttl_ms == 30 * 86_400_000 and settings.labels.remembered_ms() == 60 * 86_400_000
    assert (settings.checkpointing.state_backend, settings.checkpointing.incremental) == ("rocksdb", True)


# ---------------------------------------------------------------- bad profiles


def set_in(dotted: str, value):
    def edit(raw):
        *parents, leaf = dotted.split(".")
        node = raw
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return edit


BAD_VALUES = [
    # unknown keys
    ("model.learning_rte", 0.1, "model.learning_rte"),
    ("telemetry", {"on": True}, "telemetry"),
    ("flink.paralelism", 2, "flink.paralelism"),
    # wrong types
    ("model.snapshot_every", "often", "model.snapshot_every"),
    ("flink.parallelism", "two", "flink.parallelism"),
    ("model.l2", [0.1], "model.l2"),
    ("cleaning.max_record_bytes", {"bytes": 1}, "cleaning.max_record_bytes"),
    # impossible values
    ("model.learning_rate", -1, "model.learning_rate"),
    ("model.learning_rate", 0, "model.learning_rate"),
    ("flink.parallelism", 0, "flink.parallelism"),
    ("flink.parallelism", 129, "flink.parallelism"),
    ("model.schedule", "cosine", "model.schedule"),
    ("model.key", "amount", "model.key"),
    ("model.power_t", 2, "model.power_t"),
    ("model.l2", -0.5, "model.l2"),
    ("model.top_reasons", 21, "model.top_reasons"),
    ("cleaning.max_record_bytes", 10, "cleaning.max_record_bytes"),
    ("cleaning.default_currency", "usd", "cleaning.default_currency"),
    ("cleaning.missing", {"bogus": {"action": "impute", "value": 1}}, "cleaning.missing.bogus"),
    ("source.paths", [], "source.paths"),
    ("features.time.hour_of_day", "sometimes", "features.time.hour_of_day"),
    ("checkpointing.interval_ms", -5, "checkpointing.interval_ms"),
    ("model.optimizer", "adam", "model.optimizer"),
    ("model.ftrl", {"alpha": 0.1, "gamma": 1}, "model.ftrl.gamma"),
    ("model.initial_bias", -31, "model.initial_bias"),
    ("model.initial_bias", "low", "model.initial_bias"),
]


@pytest.mark.parametrize("dotted, value, field", BAD_VALUES, ids=[f"{d}={v!r}" for d, v, _ in BAD_VALUES])
def test_a_bad_setting_fails_with_one_line_naming_the_field(profile, dotted, value, field):
    message = config_error(profile(set_in(dotted, value)))
    assert field in message
    assert "\n" not in message


def test_a_one_hot_feature_without_vocabulary_fails_naming_it(profile):
    def edit(raw):
        raw["features"]["categorical"][0]["vocabulary"] = []
    message = config_error(profile(edit))
    assert "features.categorical" in message and "vocabulary" in message and "\n" not in message


def test_a_numeric_feature_with_a_bad_field_fails_naming_it(profile):
    def edit(raw):
        raw["features"]["numeric"][1]["field"] = "txn_count_1h"  # lacks the features. prefix
    message = config_error(profile(edit))
    assert "features.numeric.1.field" in message and "\n" not in message


def test_a_profile_without_features_fails_naming_them(profile):
    def edit(raw):
        del raw["features"]
    message = config_error(profile(edit))
    assert message.startswith("features") and "\n" not in message


@pytest.mark.parametrize("text", ["source: [unclosed\n", "- a list\n- of things\n"])
def test_a_profile_that_is_not_a_yaml_mapping_fails_in_one_line(tmp_path, text):
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    message = config_error(path)
    assert str(path) in message and "\n" not in message


def test_a_missing_profile_fails_in_one_line(tmp_path):
    message = config_error(tmp_path / "absent.yaml")
    assert "absent.yaml" in message and "\n" not in message


# ---------------------------------------------------------------- mappings, and settings that must agree


@pytest.mark.parametrize("overrides", [(), ("kafka.properties={security.protocol: SSL}",
                                            "cleaning.missing={merchant_id: {action: impute, value: m-0}}")],
                         ids=["defaults", "given"])
def test_mapping_settings_cannot_be_changed_after_loading(no_key_in_environment, overrides):
    settings = load_settings(LOCAL_PROFILE, list(overrides))
    for mapping in (settings.kafka.properties, settings.cleaning.missing):
        before = dict(mapping)
        with pytest.raises(TypeError, match="does not support item assignment"):
            mapping["security.protocol"] = "PLAINTEXT"  # type: ignore[index]
        for name in before:
            with pytest.raises(TypeError, match="does not support item deletion"):
                del mapping[name]  # type: ignore[attr-defined]
        assert dict(mapping) == before
    # Pydantic deep-copies section defaults, and a job may pickle what it is given.
    assert copy.deepcopy(settings) == settings == pickle.loads(pickle.dumps(settings))


# (overrides of the local profile, the field the line starts with, what it says is allowed)
CONTRADICTIONS = [
    (["cleaning.channels=[]"], "cleaning.channels", "at least one channel is needed"),
    (["cleaning.channels=[Web, pos]"], "cleaning.channels", "lower case"),
    (["cleaning.channels=[pos]"], "features.categorical.channel.vocabulary", "one of cleaning.channels (pos)"),
    (["cleaning.missing={country: {action: impute}}"], "cleaning.missing.country.value", "impute needs a value"),
    (["cleaning.missing={channel: {action: impute, value: kiosk}}"], "cleaning.missing.channel.value",
     "one of cleaning.channels (web, pos, atm, mobile)"),
    (["cleaning.missing={features.txn_count_1h: {action: impute, value: few}}"],
     "cleaning.missing.features.txn_count_1h.value", "must be a number"),
    (["cleaning.missing={amount: {action: impute, valu: 0}}"], "cleaning.missing.amount.valu",
     "allowed here: action, value"),
    (["features.categorical=[{field: country, encoding: one_hot, vocabulary: [US, USA]}]"],
     "features.categorical.country.vocabulary", "ISO-3166 alpha-2"),
    (["features.categorical=[{field: currency, encoding: one_hot, vocabulary: [usd, EURO]}]"],
     "features.categorical.currency.vocabulary", "ISO-4217"),
    (["features.categorical=[{field: country, encoding: hashed, buckets: 8, vocabulary: [US]}]"],
     "features.categorical.country.vocabulary", "only one_hot uses a vocabulary"),
    (["features.categorical=[{field: country, encoding: one_hot, vocabulary: [US], buckets: 8}]"],
     "features.categorical.country.buckets", "only hashed uses buckets"),
    (["features.categorical=[{field: channel, encoding: one_hot, vocabulary: [web]},"
      " {field: channel, encoding: hashed, buckets: 4}]"], "features.categorical", "channel is listed twice"),
    (["features.numeric=[{field: amount, log: true}, {field: amount, log: true, standardize: true}]"],
     "features.numeric", "amount with log: true is listed twice"),
    (["checkpointing.restart={strategy: exponential-delay, delay_ms: 0}"], "checkpointing.restart.delay_ms",
     "delay_ms >= 1"),
    (["checkpointing.restart={strategy: exponential-delay, delay_ms: 5000, max_delay_ms: 1000}"],
     "checkpointing.restart.max_delay_ms", "must be >= delay_ms (5000)"),
    (["output.kind=kafka", "checkpointing.interval_ms=600000"], "checkpointing.interval_ms",
     "below kafka.transaction_timeout_ms (600000)"),
    (["analytics.windows=[{size_ms: 60000, slide_ms: 7000}]"], "analytics.windows.slide_ms",
     "must divide size_ms (60000), got 7000"),
    (["analytics.group_by=[country, country]"], "analytics.group_by", "a field may appear once"),
    (["analytics.enabled=true", "analytics.windows=[]"], "analytics.group_by, analytics.windows",
     "at least one of each"),
    (["analytics.group_by=[amount]"], "analytics.group_by.0", "'merchant_category', 'country', 'channel' or"),
    (["labels.mode=stream"], "labels.source", "a label source is needed when labels.mode is 'stream'"),
    (["labels.mode=later"], "labels.mode", "'inline', 'stream' or 'both'"),
    (["labels.mode=both", "labels.source={kind: files}"], "labels.source.paths", "at least one file is needed"),
    (["labels.mode=stream", "labels.source={kind: directory}"], "labels.source.directory", "a directory is needed"),
    (["labels.ttl_ms=1000", "labels.remember_ms=999"], "labels.remember_ms", "must be >= labels.ttl_ms (1000)"),
    (["labels.unknown_wait_ms=-1"], "labels.unknown_wait_ms", "greater than or equal to 0"),
]


@pytest.mark.parametrize("overrides, field, allowed", CONTRADICTIONS, ids=[" ".join(o) for o, _, _ in CONTRADICTIONS])
def test_settings_that_contradict_each_other_fail_with_one_line_naming_the_field(no_key_in_environment, overrides,
                                                                                 field, allowed):
    message = config_error(LOCAL_PROFILE, overrides)
    assert message.startswith(f"{field}: ") and allowed in message and "\n" not in message, message


# Settings next to the contradictions above that must load, each with what it must then say: the
# value as given, not a default, a repair or a neighbouring field.
AGREEMENTS = [
    (["features.categorical=[{field: channel, encoding: one_hot, vocabulary: [' WEB ', pos]}]"],
     lambda s: [(f.field, f.encoding, f.vocabulary) for f in s.features.categorical]
     == [("channel", "one_hot", (" WEB ", "pos"))]),  # as written: cleaning normalizes both sides
    (["cleaning.missing={merchant_id: {action: impute}, is_fraud: {action: impute}, currency: {action: impute}}"],
     lambda s: {name: (p.action, p.value) for name, p in s.cleaning.missing.items()}
     == {"merchant_id": ("impute", None), "is_fraud": ("impute", None), "currency": ("impute", None)}),
    (["cleaning.missing={channel: {action: impute, value: ' Mobile'},"
      " features.txn_count_1h: {action: impute, value: 0}}"],
     lambda s: {name: (p.action, p.value) for name, p in s.cleaning.missing.items()}
     == {"channel": ("impute", " Mobile"), "features.txn_count_1h": ("impute", 0)}),
    (["checkpointing.restart={strategy: exponential-delay, delay_ms: 1000, max_delay_ms: 1000}"],
     lambda s: (s.checkpointing.restart.strategy, s.checkpointing.restart.delay_ms, s.checkpointing.restart.max_delay_ms)
     == ("exponential-delay", 1000, 1000)),
    (["output.kind=kafka", "kafka.delivery=at-least-once", "checkpointing.interval_ms=600000"],
     lambda s: (s.output.kind, s.kafka.delivery, s.checkpointing.interval_ms) == ("kafka", "at-least-once", 600_000)),
    (["checkpointing.interval_ms=600000"],  # file output has no transactions to time out
     lambda s: (s.output.kind, s.checkpointing.interval_ms) == ("files", 600_000)),
    (["labels.mode=both", "labels.source={kind: kafka}", "labels.ttl_ms=60000"],
     lambda s: (s.labels.mode, s.labels.streamed, s.labels.source.kind, s.labels.ttl_ms) == ("both", True, "kafka", 60_000)),
    (["labels.source={kind: files, paths: [l.jsonl]}"],  # inline: a source is allowed, and unused
     lambda s: (s.labels.mode, s.labels.streamed, s.labels.source.paths)
     == ("inline", False, (str(Path.cwd() / "l.jsonl"),))),  # --set: against the current folder
]


@pytest.mark.parametrize("overrides, holds", AGREEMENTS, ids=[" ".join(o) for o, _ in AGREEMENTS])
def test_settings_that_agree_load_and_say_what_was_given(no_key_in_environment, overrides, holds):
    settings = load_settings(LOCAL_PROFILE, overrides)
    assert holds(settings), settings


# ---------------------------------------------------------------- overrides


def test_overrides_apply_on_top_of_the_profile(no_key_in_environment):
    settings = load_settings(LOCAL_PROFILE, ["model.learning_rate=0.05", "flink.parallelism=4",
                                             "model.schedule=inverse_scaling", "model.key=country"])
    assert settings.model.learning_rate == 0.05
    assert settings.flink.parallelism == 4
    assert settings.model.schedule == "inverse_scaling"
    assert settings.model.key == "country"


def test_an_override_can_add_a_setting_the_profile_leaves_out(no_key_in_environment):
    assert load_settings(LOCAL_PROFILE, ["source.discovery_interval_ms=250"]).source.discovery_interval_ms == 250


@pytest.mark.parametrize("override, field", [
    ("model.learning_rate=-1", "model.learning_rate"),
    ("flink.parallelism=0", "flink.parallelism"),
    ("model.schedule=cosine", "model.schedule"),
    ("model.learning_rte=0.1", "model.learning_rte"),
])
def test_overrides_are_validated(no_key_in_environment, override, field):
    message = config_error(LOCAL_PROFILE, [override])
    assert field in message and "\n" not in message


def test_below_a_mapping_setting_the_rest_of_a_dotted_name_is_one_key(no_key_in_environment):
    settings = load_settings(LOCAL_PROFILE, [
        "kafka.properties.security.protocol=SASL_SSL", "kafka.properties.sasl.mechanism=PLAIN",
        "kafka.properties.linger.ms=5", "kafka.properties.enable.idempotence=true",
        "cleaning.missing.features.txn_count_1h.action=impute", "cleaning.missing.features.txn_count_1h.value=0",
        "cleaning.missing.channel={action: impute, value: web}", "cleaning.missing.amount.action=dead_letter"])
    properties = settings.kafka.client_properties()
    # Kafka reads every property as text: YAML's 5 and true are given as "5" and "true".
    assert {name: properties[name] for name in ("security.protocol", "sasl.mechanism", "linger.ms",
                                                "enable.idempotence")} == \
        {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "linger.ms": "5", "enable.idempotence": "true"}
    assert {name: (p.action, p.value) for name, p in settings.cleaning.missing.items()} == \
        {"features.txn_count_1h": ("impute", 0), "channel": ("impute", "web"), "amount": ("dead_letter", None)}


@pytest.mark.parametrize("override, holds", [
    ("source.paths=a.jsonl", lambda s: s.source.paths == (str(Path.cwd() / "a.jsonl"),)),
    ("flink.jars=lib.jar", lambda s: s.flink.jars == (str(Path.cwd() / "lib.jar"),)),
    ("analytics.group_by=country", lambda s: s.analytics.group_by == ("country",)),
    ("analytics.windows={size_ms: 5000}", lambda s: [w.size_ms for w in s.analytics.windows] == [5000]),
])
def test_a_single_value_set_where_a_list_is_expected_is_a_list_of_one(override, holds, no_key_in_environment):
    assert holds(load_settings(LOCAL_PROFILE, [override]))


def test_a_single_value_where_a_profile_needs_a_list_fails_in_plain_words(profile):
    def single_path(raw):
        raw["source"]["paths"] = "tx.jsonl"
    message = config_error(profile(single_path))
    assert message.startswith("source.paths: must be a list, such as [a, b]") and "tuple" not in message, message


@pytest.mark.parametrize("override", ["model.learning_rate", "=0.1", "model.key.inner=1"])
def test_a_malformed_override_fails_in_one_line(no_key_in_environment, override):
    message = config_error(LOCAL_PROFILE, [override])
    assert override in message and "\n" not in message


# ---------------------------------------------------------------- the pseudonym key


def test_the_environment_key_wins_over_the_profile(monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "key-from-the-environment")
    assert load_settings(LOCAL_PROFILE).pseudonym_key() == b"key-from-the-environment"


def without_key(raw):
    raw.pop("privacy", None)


def test_a_profile_without_any_key_fails_naming_privacy_pseudonym_key(profile):
    message = config_error(profile(without_key))
    assert "privacy.pseudonym_key" in message and "\n" not in message


def test_a_profile_without_a_key_loads_when_the_environment_has_one(profile, monkeypatch):
    path = profile(without_key)
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "key-from-the-environment")
    assert load_settings(path).pseudonym_key() == b"key-from-the-environment"


def test_the_key_is_not_shown_when_settings_are_printed(local_settings):
    assert "local-development-key-not-secret" not in repr(local_settings)
    assert "local-development-key-not-secret" not in str(local_settings.model_dump())


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def no_flink(monkeypatch):
    """Any import of the job module or pyflink during the test raises ImportError."""
    for name in ("streaming.job", "streaming.reporting.outputs", "pyflink"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("edit, field", [
    (set_in("model.learning_rate", -1), "model.learning_rate"),
    (without_key, "privacy.pseudonym_key"),
    (set_in("flink.parallelism", 0), "flink.parallelism"),
])
def test_run_with_a_bad_profile_exits_2_with_one_line_before_any_flink_import(profile, capsys, no_flink,
                                                                               edit, field):
    assert main(["run", "--config", str(profile(edit))]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert field in lines[0]


def test_run_with_a_bad_override_exits_2(capsys, no_flink, no_key_in_environment):
    assert main(["run", "--config", str(LOCAL_PROFILE), "--set", "model.schedule=cosine"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "model.schedule" in err


def test_generate_writes_the_requested_number_of_lines(tmp_path, capsys, no_flink):
    out = tmp_path / "nested" / "sample.jsonl"
    assert main(["generate", "--out", str(out), "--records", "250", "--seed", "3"]) == 0
    data = out.read_bytes()
    assert data.endswith(b"\n")
    assert len(data.split(b"\n")[:-1]) == 250
    assert data == b"".join(line + b"\n" for line in generate(GeneratorSettings(records=250, seed=3)))
    assert [p.name for p in out.parent.iterdir()] == ["sample.jsonl"]  # no .partial file left behind


def test_generate_with_malformed_records_still_writes_one_line_per_record(tmp_path, no_flink):
    out = tmp_path / "mixed.jsonl"
    assert main(["generate", "--out", str(out), "--records", "400", "--malformed-share", "0.3"]) == 0
    assert out.read_bytes().count(b"\n") == 400


@pytest.mark.parametrize("args", [["--records", "0"], ["--malformed-share", "1"], ["--drift-at", "1.5"]])
def test_generate_with_impossible_arguments_exits_2_with_one_line(tmp_path, capsys, no_flink, args):
    out = tmp_path / "never.jsonl"
    assert main(["generate", "--out", str(out), *args]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert not out.exists()


# ---------------------------------------------------------------- the model's optimizer


@pytest.mark.parametrize("overrides, field", [
    (["model.optimizer=adagrad", "model.schedule=inverse_scaling"], "model.schedule"),
    (["model.optimizer=ftrl", "model.schedule=inverse_scaling"], "model.schedule"),
    (["model.optimizer=ftrl", "model.l2=0.1"], "model.l2"),
    (["model.ftrl={alpha: 0.2}"], "model.ftrl"),  # the optimizer is sgd
    (["model.optimizer=adagrad", "model.ftrl.l1=1"], "model.ftrl"),
    (["model.optimizer=ftrl", "model.ftrl.alpha=0"], "model.ftrl.alpha"),
    (["model.optimizer=ftrl", "model.ftrl.beta=0"], "model.ftrl.beta"),
    (["model.optimizer=ftrl", "model.ftrl.l1=-1"], "model.ftrl.l1"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_settings_the_optimizer_does_not_use_fail_with_one_line_naming_them(overrides, field, no_key_in_environment):
    message = config_error(LOCAL_PROFILE, overrides)
    assert message.startswith(f"{field}:") and "\n" not in message, message


@pytest.mark.parametrize("overrides, expected", [
    ([], Sgd(0.01)),
    (["model.learning_rate=0.2", "model.schedule=inverse_scaling", "model.power_t=0.25", "model.l2=0.01"],
     Sgd(0.2, "inverse_scaling", 0.25, 0.01)),
    (["model.optimizer=adagrad", "model.learning_rate=0.1", "model.l2=0.001"], AdaGrad(0.1, l2=0.001)),
    (["model.optimizer=ftrl", "model.ftrl={alpha: 0.05, beta: 2, l1: 0.5, l2: 1.5}"], Ftrl(0.05, 2.0, 0.5, 1.5)),
    (["model.optimizer=ftrl"], Ftrl(0.1, 1.0, 0.0, 0.0)),
])
def test_the_scorer_learns_with_the_configured_optimizer(overrides, expected, no_key_in_environment):
    settings = load_settings(LOCAL_PROFILE, [*overrides, "model.initial_bias=-3.5"])
    scorer = model_scorer(settings, transaction_reader(settings).encoder)
    assert scorer.optimizer == expected
    assert scorer.initial_bias == -3.5
    assert scorer.new_model().model.bias == -3.5 and scorer.new_model().model.optimizer_kind == expected.kind
    table = scorer.new_table()
    assert table.bias[table.add("k")] == -3.5 and table.optimizer == expected
