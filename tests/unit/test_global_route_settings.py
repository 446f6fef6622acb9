"""Which route the global model's versions take, as the settings decide it before any job starts:
files outputs need no broker, and a fresh run refuses a folder holding an earlier run's versions."""

from __future__ import annotations

import pytest

from streaming.config import ConfigError, load_settings
from streaming.config.global_settings import check_no_earlier_versions, versions_folder
from streaming.reporting.outputs import OUTPUTS, RunOutputs
from tests.unit.conftest import LOCAL_PROFILE


def settings_with(tmp_path, *overrides):
    return load_settings(LOCAL_PROFILE, [f"output.path={tmp_path / 'out'}", *overrides])


def test_the_local_profile_runs_the_global_model_with_files_output(tmp_path, no_key_in_environment):
    settings = settings_with(tmp_path, "model.blend=global")
    assert settings.output.kind == "files"
    assert settings.model.uses_global
    assert versions_folder(settings) == tmp_path / "out" / "model-versions"


def test_a_fresh_run_refuses_an_earlier_runs_committed_versions(tmp_path, no_key_in_environment):
    settings = settings_with(tmp_path, "model.blend=global")
    check_no_earlier_versions(settings)  # no folder yet
    folder = versions_folder(settings)
    folder.mkdir(parents=True)
    (folder / ".model-versions-a-0.jsonl.inprogress.b").write_bytes(b'{"version":0}\n')
    check_no_earlier_versions(settings)  # hidden: never committed, never read
    (folder / "model-versions-a-0.jsonl").write_bytes(b'{"version":0}\n')
    with pytest.raises(ConfigError, match=r"^output\.path: .*model-versions holds an earlier run's global model"):
        check_no_earlier_versions(settings)
    check_no_earlier_versions(settings_with(tmp_path))  # without the global model the folder is not read


def test_riskstream_run_moves_an_earlier_runs_versions_aside_and_back(tmp_path, no_key_in_environment):
    settings = settings_with(tmp_path, "model.blend=global")
    folder = versions_folder(settings)
    folder.mkdir(parents=True)
    (folder / "model-versions-a-0.jsonl").write_bytes(b'{"version":0}\n')
    assert "model-versions" in OUTPUTS
    outputs = RunOutputs(tmp_path / "out")
    outputs.set_previous_aside()
    check_no_earlier_versions(settings)  # the new run starts with none
    outputs.restore_previous()  # the run failed: the earlier run's versions are back
    assert (folder / "model-versions-a-0.jsonl").read_bytes() == b'{"version":0}\n'
