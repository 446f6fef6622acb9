"""The file source's tags (SourceTaggedLineFormat.java) read back by split_envelope (udfs/wire.py)
as the real path, whatever characters it holds: the Java side escapes, the Python side unescapes,
and only running both shows that they agree."""

from __future__ import annotations

from streaming.config import load_settings
from tests.integration.conftest import LOCAL_PROFILE
from udfs.wire import split_envelope

# Tab and newline must be escaped (a tab ends the tag, a newline would cut a bundle in two); the
# colons look like the tag's own separators.
AWKWARD_NAME = "tab\tand\nnewline:7:.jsonl"


LINES = [b"not json", b'{"txn_id": "t-2"}', b""]  # each dead-lettered: parse, clean, decode


def test_dead_letters_name_their_file_byte_for_byte_whatever_its_name(shared_run):
    """The file AWKWARD_NAME in the run shared with other tests (conftest.shared_run)."""
    real_path = shared_run.path(AWKWARD_NAME)
    assert shared_run.inputs[AWKWARD_NAME] == LINES and "\t" in real_path and "\n" in real_path
    sources = sorted((letter["source"].get("file"), letter["source"].get("line"))
                     for letter in shared_run.outputs.dead_letters if letter["source"].get("file") == real_path)
    assert sources == [(real_path, 1), (real_path, 2), (real_path, 3)]
    # ... and no dead letter of the run names a file that is not one of its inputs.
    named = {letter["source"].get("file") for letter in shared_run.outputs.dead_letters}
    assert named <= {shared_run.path(name) for name in shared_run.inputs}, named


def test_a_path_with_backslashes_is_tagged_so_that_it_reads_back_whole(tmp_path):
    """Flink's Path(String), which FileSource applies to the paths it is given and to those it
    lists in a directory, turns every backslash into a slash, so the job cannot read such a file
    today; a Path made from the file's URI keeps them, and the format must then tag it faithfully.
    The format runs here on its own, in the client's JVM."""
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.java_gateway import get_gateway

    from streaming.job.graph import flink_configuration

    path = tmp_path / "back\\slash\\new\ttab\nline\\t.jsonl"  # "\\n", "\\t": a backslash, then a letter
    path.write_bytes(b"first\nsecond")
    settings = load_settings(LOCAL_PROFILE, [f"source.paths=['{tmp_path}']"])
    StreamExecutionEnvironment.get_execution_environment(flink_configuration(settings))  # loads the project's jar
    jvm = get_gateway().jvm
    flink_path = jvm.org.apache.flink.core.fs.Path(jvm.java.io.File(str(path)).toURI())
    size = path.stat().st_size
    split = jvm.org.apache.flink.connector.file.src.FileSourceSplit("0", flink_path, 0, size, 0, size)
    reader = jvm.riskstream.flink.SourceTaggedLineFormat().createReader(
        jvm.org.apache.flink.configuration.Configuration(), split)
    records = []
    try:
        batch = reader.readBatch()
        while batch is not None:
            record = batch.next()
            while record is not None:
                records.append(record.getRecord())
                record = batch.next()
            batch.releaseBatch()
            batch = reader.readBatch()
    finally:
        reader.close()

    assert not any("\n" in record for record in records)
    assert [split_envelope(record) for record in records] == [
        ({"file": str(path), "line": 1}, b"first"), ({"file": str(path), "line": 2}, b"second")]
