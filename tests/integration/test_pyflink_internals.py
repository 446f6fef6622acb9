"""The private PyFlink APIs Riskstream relies on (streaming/job/pyflink_internals.py), each exercised, so
that a PyFlink upgrade that removes or changes one fails here, by name, rather than in a job."""

from __future__ import annotations

import inspect
import json

from streaming.job import pyflink_internals as internals


def test_a_kafka_job_graph_builds_through_the_java_builders_and_operators(kafka_settings):
    """Building the Kafka-mode job uses jvm(), apply_java (bundling, line splitting), java_offsets
    and java_strings (the Java KafkaSource builder), source_of and sink_of; the plan shows them all."""
    from pyflink.datastream import StreamExecutionEnvironment

    from streaming.job.graph import build_job, flink_configuration

    settings = kafka_settings.model_copy(update={"kafka": kafka_settings.kafka.model_copy(update={"bounded": True})})
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(settings))
    build_job(env, settings)
    plan = json.loads(env.get_execution_plan())
    names = " | ".join(node["contents"] for node in plan["nodes"])
    for operator in ("transactions-source", "bundle-records", "split-scores", "scores-sink", "dead-letters-sink"):
        assert operator in names, names


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


def test_pyflink_still_reads_the_worker_mode_variable():
    from pyflink.datastream import StreamExecutionEnvironment

    assert f"'{internals.PYTHON_WORKER_MODE_VARIABLE}'" in inspect.getsource(StreamExecutionEnvironment._open)
    assert "'process'" in inspect.getsource(StreamExecutionEnvironment._open)
