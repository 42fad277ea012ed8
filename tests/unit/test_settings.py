from __future__ import annotations

from pathlib import Path

import pytest

from churnwatch.core.settings import ConfigError, Settings, load_settings


def test_default_yaml_states_the_same_values_as_the_code():
    # The YAML is the documentation of the defaults; it must not drift from them.
    assert load_settings() == Settings()


def test_unknown_key_is_an_error_that_names_the_key(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text("kafka:\n  bootstrap_server: localhost:9092\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server: Extra inputs"):
        load_settings(config)


def test_bad_value_names_the_key(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text("warnings:\n  overdue_debt:\n    enter_days_past_due: soon\n")
    with pytest.raises(ConfigError, match=r"warnings\.overdue_debt\.enter_days_past_due"):
        load_settings(config)


def test_a_replaced_key_says_what_replaced_it(tmp_path: Path):
    config = tmp_path / "old.yaml"
    config.write_text("warnings:\n  sales_drop:\n    enter_silence_ratio: 3.0\n")
    with pytest.raises(
        ConfigError, match=r"enter_silence_ratio was replaced by enter_silence_chance"
    ):
        load_settings(config)


def test_environment_overrides_the_file(monkeypatch):
    monkeypatch.setenv("CHURNWATCH_KAFKA__PARTITIONS", "8")
    monkeypatch.setenv("CHURNWATCH_CLOCK__MODE", "wall")
    settings = load_settings()
    assert settings.kafka.partitions == 8
    assert settings.clock.mode == "wall"
    assert settings.kafka.topic_prefix == "churn"  # the rest still from the file


def test_password_is_never_printed(monkeypatch):
    monkeypatch.setenv("CHURNWATCH_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CHURNWATCH_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("CHURNWATCH_KAFKA__SASL_PASSWORD", "hunter2")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


def test_missing_file_says_which(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_topics_are_versioned_with_the_prefix():
    settings = load_settings(kafka={"topic_prefix": "acme"})
    assert settings.topic("orders.v1") == "acme.orders.v1"


def test_segment_overrides_merge_over_the_defaults():
    settings = load_settings(
        warnings={"segments": {"key_account": {"sales_drop": {"enter_ratio": 0.7}}}}
    )
    key = settings.warnings.for_segment("key_account")
    assert key.sales_drop.enter_ratio == 0.7
    assert key.sales_drop.exit_ratio == settings.warnings.sales_drop.exit_ratio
    assert settings.warnings.for_segment("small") is settings.warnings


def test_a_bad_segment_override_names_the_key():
    with pytest.raises(ConfigError, match=r"segments\.key_account\.sales_drop\.enter_rati"):
        load_settings(warnings={"segments": {"key_account": {"sales_drop": {"enter_rati": 1}}}})


@pytest.mark.parametrize(
    "name, hint",
    [
        ("CHURNWATCH_WORKER_METRICS_PORT", "did you mean CHURNWATCH_WORKER__METRICS_PORT"),
        ("CHURNWATCH_KAFKAA__PARTITIONS", "known here: kafka, broker"),
        ("CHURNWATCH_ALERTS__SMTP__PASWORD", "known here: host, port"),
        ("CHURNWATCH_WORKER__METRICS_PORT__X", "worker.metrics_port has no parts"),
    ],
)
def test_an_environment_variable_that_sets_nothing_is_an_error_that_names_it(
    monkeypatch, name, hint
):
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError, match=f"unknown setting in the environment: {name}") as caught:
        load_settings()
    assert hint in str(caught.value)


def test_sasl_credentials_only_with_a_sasl_protocol(monkeypatch):
    monkeypatch.setenv("CHURNWATCH_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("CHURNWATCH_KAFKA__SASL_USERNAME", "app")
    monkeypatch.setenv("CHURNWATCH_KAFKA__SASL_PASSWORD", "hunter2")
    with pytest.raises(ConfigError, match="kafka: .*security_protocol is PLAINTEXT") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    monkeypatch.setenv("CHURNWATCH_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    options = load_settings().kafka_client_options()
    assert (options["security_protocol"], options["sasl_plain_username"]) == ("SASL_SSL", "app")


def test_the_worker_store_takes_its_buffer_size_from_the_settings(tmp_path: Path):
    """Faust's RocksDB defaults (64 MB write buffers, a 2 GB cache per partition's
    database) made a worker's memory grow with every byte it stored."""
    from churnwatch.pipeline.worker import create_app

    settings = load_settings(worker={"data_dir": str(tmp_path), "store_buffer_mb": 3})
    pipeline = create_app(settings)
    for table in (pipeline.states, pipeline.sweep_progress):
        options = table.data.rocksdb_options  # type: ignore[attr-defined]
        assert options.write_buffer_size == 3 * 1024 * 1024
        assert options.block_cache_size == 3 * 1024 * 1024
        assert options.max_write_buffer_number == 2


def test_churn_risk_opens_relative_to_the_book_so_a_low_churn_book_is_not_silent():
    from churnwatch.core.thresholds import ChurnRiskThresholds

    default = ChurnRiskThresholds()
    assert default.bounds(0.06) == pytest.approx((0.154, 0.06))
    assert default.bounds(0.46) == pytest.approx((0.514, 0.46))
    assert default.bounds(None) == pytest.approx((0.55, 0.5))  # a card without the rate
    fixed = ChurnRiskThresholds(enter_probability=0.7, exit_probability=0.5)
    assert fixed.bounds(0.06) == (0.7, 0.5)
    with pytest.raises(ValueError, match="both"):
        ChurnRiskThresholds(enter_probability=0.7)
    with pytest.raises(ValueError, match="exit_share"):
        ChurnRiskThresholds(enter_share=0.1, exit_share=0.2)
    with pytest.raises(ValueError, match="high_step"):
        ChurnRiskThresholds(medium_step=0.5, high_step=0.4)


def test_a_relative_routing_file_is_read_beside_the_settings_file(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # anywhere but the checkout or the config's folder
    shipped = load_settings()
    assert Path(shipped.alerts.routing).is_file()  # the example shipped with the package
    config = tmp_path / "team.yaml"
    config.write_text("alerts:\n  routing: our-routing.yaml\n")
    assert load_settings(config).alerts.routing == str(tmp_path / "our-routing.yaml")
    monkeypatch.setenv("CHURNWATCH_ALERTS__ROUTING", "here.yaml")
    assert load_settings(config).alerts.routing == "here.yaml"  # the environment: as given
