"""Configuration: the demo YAML equals the defaults; bad configs fail at the edge with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from jstip.config import BuildConfig, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_yaml_spells_out_the_defaults():
    assert load_config(REPO / "configs" / "demo.yaml") == BuildConfig()


def test_overrides_and_canonical_json(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: trial\nplan:\n  format: F2\n")
    config = load_config(path, shard_size=7)
    assert (config.name, config.shard_size, config.plan.format) == ("trial", 7, "F2")
    assert config.version_config_json() == load_config(path, shard_size=7).version_config_json()
    assert config.version_config_json() != BuildConfig().version_config_json()


@pytest.mark.parametrize("text, message", [
    ("plan:\n  format: F3\n", "format"),
    ("checks:\n  min_duration: 40\n", "must be below max_duration"),
    ("shard_sise: 3\n", "shard_sise"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_invalid_configs_are_rejected_with_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "bad.yaml" in str(info.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found: /nope.yaml"):
        load_config("/nope.yaml")


def test_the_38k_config_loads_and_differs_only_where_it_says():
    config = load_config(REPO / "configs" / "38k.yaml")
    assert (config.shard_size, config.plan.strategy, config.plan.speech_fraction, config.runner.kind) == (
        2000, "mixed", 0.3, "dask")
    assert config.plan.word.poisson_lambda == 10.0
    assert config.align == BuildConfig().align and config.checks == BuildConfig().checks


def test_gx_off_as_the_docs_write_it_is_accepted(tmp_path):
    # YAML 1.1 reads a bare `off` as a boolean; `checks.gx: off` means the suites are off, not an error
    config = tmp_path / "build.yaml"
    config.write_text("checks:\n  gx: off\n")
    assert load_config(config).checks.gx == "off"
    config.write_text("checks:\n  gx: on\n")
    with pytest.raises(ConfigError, match="checks.gx"):
        load_config(config)
