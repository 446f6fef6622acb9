"""The private PyFlink APIs Riskstream relies on (streaming/job/pyflink_internals.py), each exercised, so
that a PyFlink upgrade that removes or changes one fails here, by name, rather than in a job."""

from __future__ import annotations

import pytest

from streaming.config import load_settings
from streaming.job import pyflink_internals as internals
from tests.integration.conftest import PROJECT


def java_fields(obj) -> dict:
    """The instance fields of a Java object, its classes' and their superclasses', by name (read
    by reflection: the connectors keep their configuration private)."""
    jvm = internals.jvm()
    found, cls = {}, obj.getClass()
    while cls is not None:
        for field in cls.getDeclaredFields():
            if not jvm.java.lang.reflect.Modifier.isStatic(field.getModifiers()):
                field.setAccessible(True)
                found.setdefault(field.getName(), field.get(obj))
        cls = cls.getSuperclass()
    return found


def connectors_of(env) -> dict[str, object]:
    """The sources' and sinks' Java objects (KafkaSource, KafkaSink, FileSink...) of the job built in
    `env`, by the uid of their transformation."""
    todo, seen = list(env._j_stream_execution_environment.getTransformations()), {}
    while todo:
        transformation = todo.pop()
        if transformation.getId() not in seen:
            seen[transformation.getId()] = transformation
            todo.extend(transformation.getInputs())
    connectors = {}
    for transformation in seen.values():
        kind = transformation.getClass().getSimpleName()
        if kind == "SourceTransformation":
            connectors[transformation.getUid()] = transformation.getSource()
        elif kind == "SinkTransformation":
            connectors[transformation.getUid()] = transformation.getSink()
    return connectors


@pytest.mark.parametrize("bounded, delivery", [(True, "exactly-once"), (False, "at-least-once")])
def test_a_kafka_job_graph_carries_the_profiles_kafka_configuration(bounded, delivery):
    """The Kafka-mode job, built through jvm(), apply_java, java_offsets, java_strings, source_of and
    sink_of: its Kafka source and sinks, as Java objects in the built graph, read and write the
    profile's topics with its group, read_committed, bounded or not, and deliver exactly once with
    a transactional id per sink, or at least once. Nothing here talks to a broker."""
    from pyflink.datastream import StreamExecutionEnvironment

    from streaming.job.graph import build_job, flink_configuration

    overrides = [f"kafka.{name}_topic=graph-{name}"
                 for name in ("transactions", "scores", "dead_letters", "snapshots", "analytics", "late")]
    settings = load_settings(PROJECT / "conf" / "kafka.yaml", [
        *overrides, "kafka.consumer_group=graph-group", "kafka.transactional_id_prefix=graph-tx",
        f"kafka.bounded={str(bounded).lower()}", f"kafka.delivery={delivery}"])
    kafka = settings.kafka
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(settings))
    build_job(env, settings)
    connectors = connectors_of(env)

    # Analytics are on in Kafka mode too, and de-duplication (its repeated-ids) everywhere by default.
    assert set(connectors) == {"transactions-source", "scores-sink", "dead-letters-sink", "model-snapshots-sink",
                               "analytics-sink", "late-sink", "repeated-ids-sink"}
    source = java_fields(connectors["transactions-source"])
    assert connectors["transactions-source"].getClass().getName() == "org.apache.flink.connector.kafka.source.KafkaSource"
    assert list(java_fields(source["subscriber"])["topics"]) == ["graph-transactions"]
    properties = dict(source["props"])
    assert (properties["group.id"], properties["isolation.level"], properties["bootstrap.servers"]) == (
        "graph-group", "read_committed", kafka.bootstrap_servers)
    assert str(source["boundedness"]) == ("BOUNDED" if bounded else "CONTINUOUS_UNBOUNDED")
    stopping = source["stoppingOffsetsInitializer"].getClass().getSimpleName()
    assert stopping == ("LatestOffsetsInitializer" if bounded else "NoStoppingOffsetsInitializer"), stopping
    assert source["deserializationSchema"].getClass().getName() == "riskstream.flink.kafka.TaggedKafkaDeserializer"

    for name, topic in (("scores", "graph-scores"), ("dead-letters", "graph-dead_letters"),
                        ("model-snapshots", "graph-snapshots"), ("analytics", "graph-analytics"), ("late", "graph-late")):
        sink = connectors[f"{name}-sink"]
        assert sink.getClass().getName() == "org.apache.flink.connector.kafka.sink.KafkaSink"
        fields = java_fields(sink)
        assert java_fields(fields["recordSerializer"])["topic"] == topic
        assert str(fields["deliveryGuarantee"]) == delivery
        producer = dict(fields["kafkaProducerConfig"])
        assert producer["bootstrap.servers"] == kafka.bootstrap_servers
        assert producer["transaction.timeout.ms"] == str(kafka.transaction_timeout_ms)
        if delivery == "exactly-once":  # one transactional id per sink, so that sinks never fence each other
            assert fields["transactionalIdPrefix"] == f"graph-tx-{name}"
        else:
            assert fields["transactionalIdPrefix"] is None or not fields["transactionalIdPrefix"].startswith("graph-tx")


def test_java_values_behind_python_wrappers():
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer

    assert "OffsetsInitializer" in internals.java_offsets(KafkaOffsetsInitializer.earliest()).getClass().getName()
    topics = internals.java_strings(["transactions", "labels"])
    assert (len(topics), topics[0], topics[1]) == (2, "transactions", "labels")
    sizes = internals.java_longs([60_000, 2**62])
    assert (len(sizes), sizes[0], sizes[1]) == (2, 60_000, 2**62)
    assert sizes.getClass().getName() == "[J"  # long[]


def test_the_java_job_client_and_its_savepoint_call_are_where_stop_with_savepoint_looks():
    from pyflink.common import JobClient

    java_client = object()
    assert JobClient(java_client)._j_job_client is java_client
    formats = internals.jvm().org.apache.flink.core.execution.SavepointFormatType
    assert formats.DEFAULT.toString() in ("CANONICAL", "NATIVE")
    client_class = internals.jvm().java.lang.Class.forName("org.apache.flink.core.execution.JobClient")
    signatures = {str(method.toString()) for method in client_class.getMethods() if method.getName() == "stopWithSavepoint"}
    assert any("(boolean,java.lang.String,org.apache.flink.core.execution.SavepointFormatType)" in s
               for s in signatures), signatures


def python_operators_on_paths(env, source_uid: str, sink_uid: str) -> set[tuple[str, ...]]:
    """The Python operators (by name) on each path of the job built in `env` from the transformation
    `source_uid` to `sink_uid`: each is a hop of the elements on that path into Python and back."""
    is_python = internals.jvm().org.apache.flink.python.util.PythonConfigUtil.isPythonDataStreamOperator
    [sink] = [t for t in env._j_stream_execution_environment.getTransformations() if t.getUid() == sink_uid]
    found, todo = set(), [(sink, ())]
    while todo:
        transformation, after = todo.pop()
        names = (str(transformation.getName()), *after) if is_python(transformation) else after
        if transformation.getUid() == source_uid:
            found.add(names)
        todo.extend((upstream, names) for upstream in transformation.getInputs())
    return found


def built_job(profile: str, overrides: list[str]):
    from pyflink.datastream import StreamExecutionEnvironment

    from streaming.job.graph import build_job, flink_configuration

    settings = load_settings(PROJECT / "conf" / profile, overrides)
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(settings))
    build_job(env, settings)
    return env


PREPARE, SCORE, READ_LABELS = "decode-parse-clean-features", "score-and-learn", "read-labels"


@pytest.mark.parametrize("profile, overrides", [
    ("local.yaml", []),
    ("local.yaml", ["model.blend=sum", "model.drift.detector=page_hinkley"]),
    ("labels.yaml", ["analytics.enabled=true", "model.blend=sum"]),
])
def test_a_record_goes_into_python_to_be_prepared_and_to_be_scored_and_nowhere_else(profile, overrides):
    """keyed_by_first_field and side_output in the job's graph: a transaction crosses into Python
    twice on its way to a score (preparing, scoring: no key-extraction operator between them), a
    dead letter once, and a label twice (reading it, learning from it); no side output passes
    through a Python identity map."""
    env = built_job(profile, overrides)
    assert python_operators_on_paths(env, "transactions-source", "scores-sink") == {(PREPARE, SCORE)}
    # Dead letters from reading, and a redelivery's from scoring (de-duplication, before the models).
    assert python_operators_on_paths(env, "transactions-source", "dead-letters-sink") == {(PREPARE,), (PREPARE, SCORE)}
    assert python_operators_on_paths(env, "transactions-source", "repeated-ids-sink") == {(PREPARE, SCORE)}
    assert python_operators_on_paths(env, "transactions-source", "model-snapshots-sink") == {(PREPARE, SCORE)}
    if profile == "labels.yaml":
        assert python_operators_on_paths(env, "labels-source", "learning-sink") == {(READ_LABELS, SCORE)}
        # The routes of the scored transactions reach the label join from the preparing operator.
        assert python_operators_on_paths(env, "transactions-source", "learning-sink") == {(PREPARE, SCORE)}
        assert python_operators_on_paths(env, "labels-source", "label-dead-letters-sink") == {
            (READ_LABELS,), (READ_LABELS, SCORE)}
        assert python_operators_on_paths(env, "transactions-source", "analytics-sink") == {(PREPARE, SCORE)}
    if "model.drift.detector=page_hinkley" in overrides:
        assert python_operators_on_paths(env, "transactions-source", "drift-sink") == {(PREPARE, SCORE)}
