"""Every place where Riskstream reaches below PyFlink's public Python API (PyFlink 2.2), each with
why no public API serves. A PyFlink upgrade that removes or changes one of them fails
tests/integration/test_pyflink_internals.py, which exercises each, instead of a job at run time.
"""

from __future__ import annotations

import builtins
import os
import sys
from typing import Any, Iterable

from pyflink.common import CompletableFuture, JobClient, Types
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import DataStream, KeyedStream, OutputTag
from pyflink.datastream.connectors import Sink, Source
from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import to_jarray

# The environment variable PyFlink reads (stream_execution_environment.py, `_open`) to decide how a
# local mini-cluster runs Python workers; nothing in the Configuration says it.
PYTHON_WORKER_MODE_VARIABLE = "_python_worker_execution_mode"


def jvm() -> Any:
    """The py4j view of the JVM's classes: the project's Java pieces and the Kafka connector's
    builders are reached through it (PyFlink wraps neither)."""
    return get_gateway().jvm


def apply_java(stream: DataStream, build) -> DataStream:
    """`build(java_stream)` applied to the Java DataStream behind `stream`, wrapped again.

    PyFlink offers no way to apply a Java operator or function (`transform`, `flatMap` with a
    Java FlatMapFunction) to a Python DataStream; the Java stream is its private `_j_data_stream`.
    """
    return DataStream(build(stream._j_data_stream))


def apply_java_to_two(first: DataStream, second: DataStream, build) -> DataStream:
    """`build(first_java_stream, second_java_stream)` wrapped again: `apply_java` for a Java
    operator of two inputs (LabelRouter.java's keyed join of routes and labels)."""
    return DataStream(build(first._j_data_stream, second._j_data_stream))


def keyed_by_first_field(stream: DataStream, key_type: TypeInformation, value_type: TypeInformation) -> KeyedStream:
    """`stream`, whose elements are Row(key, value) (typed Types.ROW([key_type, value_type])), keyed
    by the key, as a KeyedStream of the values: what `key_by` gives, without its operator.

    PyFlink's `key_by` adds a Python operator that makes each element Row(key_selector(element),
    element), then keys that by its field 0 with the Java `KeyByKeySelector`; a keyed Python function
    downstream receives the value. That operator is a hop of every element's bytes into Python and
    back, and PyFlink's chaining does not fuse it with an upstream Python operator that has a side
    output. An upstream operator (Python or Java) that emits Row(key, value) itself needs only the
    keying, which is Java; the KeyedStream constructor is not public API."""
    j_keyed = stream._j_data_stream.keyBy(jvm().org.apache.flink.streaming.api.functions.python.KeyByKeySelector(),
                                          Types.ROW([key_type]).get_java_type_info())
    return KeyedStream(j_keyed, value_type, stream)


def side_output(stream: DataStream, tag: OutputTag) -> DataStream:
    """The elements a Python operator emitted with `tag`, as the Java stream of the tag's type.

    PyFlink's `get_side_output` adds a Python identity map (`map(lambda i: i)`) behind every side
    output: one more hop into Python and back for every element of it (a route line per
    transaction, with labels from a stream). The side output itself is Java's, and PyFlink tells
    the Python operator its tags from the graph's side-output transformations
    (PythonConfigUtil.processSideOutput), whoever consumes them; the consumers here are Java
    (sinks, line splitters, the label router) and take the tag's type (bytes) as it is."""
    return DataStream(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()))


def java_offsets(initializer: KafkaOffsetsInitializer) -> Any:
    """The Java OffsetsInitializer behind a Python one (its private `_j_initializer`).

    The Kafka source is built with the connector's Java builder, because PyFlink's
    KafkaSourceBuilder cannot take a Java deserializer (ours tags each record with its topic,
    partition and offset); the Java builder wants Java initializers."""
    return initializer._j_initializer


def java_strings(values: Iterable[str]) -> Any:
    """A Java String[] (the Java builder's setTopics(String...)); `to_jarray` is PyFlink's own,
    undocumented helper."""
    return to_jarray(jvm().String, list(values))


def java_longs(values: Iterable[int]) -> Any:
    """A Java long[] (`to_jarray` with py4j's primitive long type)."""
    return to_jarray(get_gateway().jvm.long, list(values))


def source_of(java_source: Any) -> Source:
    """A Python Source around a Source built in Java (PyFlink's wrapper takes the Java object)."""
    return Source(java_source)


def sink_of(java_sink: Any) -> Sink:
    """A Python Sink around a Sink built in Java (ours serializes `<key>\\t<value>` lines)."""
    return Sink(java_sink)


def stop_with_savepoint(client: JobClient, directory_uri: str) -> CompletableFuture:
    """Asks Flink to stop the job with a savepoint in `directory_uri`, without draining the input;
    the future holds the savepoint's path.

    PyFlink 2.2's JobClient.stop_with_savepoint calls a Java method that no longer exists (Flink
    1.15 added the savepoint format argument), so this calls the Java client (`_j_job_client`)."""
    format_type = jvm().org.apache.flink.core.execution.SavepointFormatType.DEFAULT
    return CompletableFuture(client._j_job_client.stopWithSavepoint(False, directory_uri, format_type), str)


def run_python_workers_as_processes() -> None:
    """On a local mini-cluster PyFlink otherwise runs "process" mode workers as threads of the
    client process ("loopback"), which share one interpreter lock as thread mode does; only this
    variable makes them real processes."""
    os.environ[PYTHON_WORKER_MODE_VARIABLE] = "process"


def let_numba_import_in_python_workers() -> None:
    """PyFlink's process-mode Python worker replaces builtins.print with a bound method of its own
    (beam_sdk_worker_main.CustomPrint.print), and numba, as it is imported, checks that every builtin
    it types is found under its name in its module: `import numba` then fails with "module
    'pyflink.fn_execution.beam.beam_sdk_worker_main' has no attribute 'print'". Giving that module
    the attribute lets numba import; print behaves as before. Call before numba is imported."""
    printer = builtins.print
    module = sys.modules.get(getattr(printer, "__module__", None) or "builtins")
    if module is not None and getattr(module, "print", None) is not printer:
        module.print = printer
