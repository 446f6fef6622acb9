"""The event_time section shared by analytics and labels, and the settings it took over from them
(accepted at their old place for one release, with a one-line warning)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from streaming.config import ConfigError, load_settings

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_PROFILE = PROJECT / "conf" / "local.yaml"


@pytest.fixture
def local_profile(tmp_path, no_key_in_environment) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(LOCAL_PROFILE.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "data").mkdir()
    return path


def test_transactions_and_labels_have_watermark_settings_of_their_own(local_profile):
    defaults = load_settings(local_profile).event_time
    settings = load_settings(local_profile, ["event_time.transactions.idleness_ms=1234",
                                             "event_time.labels.out_of_orderness_ms=77"]).event_time
    assert (settings.transactions.idleness_ms, settings.labels.out_of_orderness_ms) == (1234, 77)
    # Setting one input's watermark leaves the other's as it was.
    assert settings.transactions.out_of_orderness_ms == defaults.transactions.out_of_orderness_ms
    assert settings.labels.idleness_ms == defaults.labels.idleness_ms


@pytest.mark.parametrize("old, new", [
    ("analytics.out_of_orderness_ms", ("transactions", "out_of_orderness_ms")),
    ("analytics.idleness_ms", ("transactions", "idleness_ms")),
    ("labels.out_of_orderness_ms", ("labels", "out_of_orderness_ms")),
    ("labels.idleness_ms", ("labels", "idleness_ms")),
])
def test_an_old_name_still_sets_the_setting_with_one_warning_line(local_profile, caplog, old, new):
    with caplog.at_level(logging.WARNING, logger="streaming.config"):
        settings = load_settings(local_profile, [f"{old}=4321"])
    assert getattr(getattr(settings.event_time, new[0]), new[1]) == 4321
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"{old} is deprecated; use event_time.{new[0]}.{new[1]}" in warnings[0]


def test_an_old_name_in_a_profile_file_is_moved_too(local_profile, caplog):
    raw = yaml.safe_load(local_profile.read_text(encoding="utf-8"))
    raw.setdefault("analytics", {})["idleness_ms"] = 2500
    local_profile.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="streaming.config"):
        assert load_settings(local_profile).event_time.transactions.idleness_ms == 2500
    assert "analytics.idleness_ms is deprecated" in caplog.text


def test_the_same_setting_under_both_names_is_refused_in_one_line(local_profile):
    with pytest.raises(ConfigError) as info:
        load_settings(local_profile, ["labels.idleness_ms=1", "event_time.labels.idleness_ms=2"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("labels.idleness_ms: renamed to event_time.labels.idleness_ms, which is also given")


def test_transactions_are_watermarked_only_for_what_needs_event_time(local_profile, tmp_path):
    (tmp_path / "labels.jsonl").write_text("", encoding="utf-8")
    assert load_settings(local_profile).transactions_in_event_time  # the profile's analytics are on
    assert not load_settings(local_profile, ["analytics.enabled=false", "dedup.horizon_ms=0"]).transactions_in_event_time
    # De-duplication forgets a txn_id when the watermark passes its event time plus the horizon.
    assert load_settings(local_profile, ["analytics.enabled=false"]).transactions_in_event_time
    assert load_settings(local_profile, ["analytics.enabled=false", "dedup.horizon_ms=0", "labels.mode=stream", "labels.source.kind=files",
                                         f"labels.source.paths=[{tmp_path / 'labels.jsonl'}]"]).transactions_in_event_time
