from __future__ import annotations

from click.testing import CliRunner

from churnwatch.cli import cli


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "broker", "worker", "simulate", "warnings", "topics"):
        assert command in result.output


def test_bad_settings_file_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("clock:\n  mode: sundial\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "topics", "create"])
    assert result.exit_code == 2
    assert "clock.mode" in result.output


def test_docs_check_passes_on_the_committed_docs():
    result = CliRunner().invoke(cli, ["docs", "events", "--check"])
    assert result.exit_code == 0, result.output
