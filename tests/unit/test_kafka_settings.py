"""Kafka client properties: profile and environment pass through; secret values never show."""

from __future__ import annotations

from pathlib import Path

from streaming.config import load_settings

KAFKA_PROFILE = Path(__file__).resolve().parents[2] / "conf" / "kafka.yaml"


def test_profile_and_environment_properties_reach_every_client(monkeypatch):
    monkeypatch.setenv("RISKSTREAM_KAFKA__SASL_JAAS_CONFIG", "org.example.Login required password='s3cret-env';")
    settings = load_settings(KAFKA_PROFILE, ["kafka.properties={security.protocol: SASL_SSL, sasl.password: s3cret-yaml}"])
    properties = settings.kafka.client_properties()
    assert properties["bootstrap.servers"] == "127.0.0.1:19092"
    assert properties["security.protocol"] == "SASL_SSL"
    assert properties["sasl.password"] == "s3cret-yaml"
    assert properties["sasl.jaas.config"] == "org.example.Login required password='s3cret-env';"


def test_secret_property_values_are_hidden_when_settings_are_printed(monkeypatch):
    settings = load_settings(KAFKA_PROFILE, ["kafka.properties={sasl.password: s3cret-yaml}"])
    assert "s3cret-yaml" not in repr(settings)
    assert "s3cret-yaml" not in str(settings.kafka)
    assert "s3cret-yaml" not in settings.model_dump_json()


def test_the_environment_overrides_a_profile_property(monkeypatch):
    monkeypatch.setenv("RISKSTREAM_KAFKA__SASL_PASSWORD", "from-env")
    settings = load_settings(KAFKA_PROFILE, ["kafka.properties={sasl.password: from-yaml}"])
    assert settings.kafka.client_properties()["sasl.password"] == "from-env"
