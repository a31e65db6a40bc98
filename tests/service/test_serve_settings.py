"""Settings (the only reader of DISTILL_SERVE_* variables) and the thin ``distill serve`` command."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from service_helpers import PACKAGE, TOKEN
from typer.testing import CliRunner

from serve.settings import ServeSettings, is_loopback


def test_loopback_by_default_and_a_token_is_required_anywhere_else(tmp_path):
    settings = ServeSettings(package=PACKAGE)
    assert settings.host == "127.0.0.1" and settings.bearer_token() is None
    assert settings.max_body_bytes == 64 * 1024 * 1024 and settings.admission_capacity == 3
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.org", "192.168.0.5"):
        with pytest.raises(ValidationError, match="needs a bearer token"):
            ServeSettings(package=PACKAGE, host=host)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert ServeSettings(package=PACKAGE, host="0.0.0.0", token_file=token_file).bearer_token() == TOKEN
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"))


def test_token_rules(tmp_path):
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ValidationError, match="at least 16"):
        ServeSettings(package=PACKAGE, token_file=short)
    two = tmp_path / "two"
    two.write_text(TOKEN + "\n" + TOKEN)
    with pytest.raises(ValidationError, match="exactly one"):
        ServeSettings(package=PACKAGE, token_file=two)
    with pytest.raises(ValidationError, match="cannot read"):
        ServeSettings(package=PACKAGE, token_file=tmp_path / "missing")
    with pytest.raises(ValidationError, match="not both"):
        ServeSettings(package=PACKAGE, token=TOKEN, token_file=two)


def test_environment_variables_with_the_prefix_are_read(monkeypatch):
    monkeypatch.setenv("DISTILL_SERVE_PACKAGE", str(PACKAGE))
    monkeypatch.setenv("DISTILL_SERVE_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("DISTILL_SERVE_TOKEN", TOKEN)
    monkeypatch.setenv("DISTILL_SERVE_HOST", "0.0.0.0")
    settings = ServeSettings()
    assert settings.max_concurrency == 3 and settings.bearer_token() == TOKEN and settings.host == "0.0.0.0"
    assert TOKEN not in repr(settings)  # a SecretStr
    monkeypatch.setenv("DISTILL_SERVE_MAX_QUEUE", "-1")
    with pytest.raises(ValidationError):
        ServeSettings()


def test_distill_serve_is_a_thin_command_without_a_token_option():
    from distill.cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--host", "--port", "--backend", "--token-file", "--max-concurrency", "--max-queue", "--max-body-mb",
                   "--request-timeout", "--drain"):  # fmt: skip
        assert option in help_text, option
    assert "--token " not in help_text  # a token never goes on the command line


def test_distill_serve_refuses_a_public_bind_without_token_in_one_line(capsys):
    import sys

    from distill import cli

    argv = sys.argv
    sys.argv = ["distill", "serve", str(PACKAGE), "--host", "0.0.0.0", "--port", "0"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    finally:
        sys.argv = argv
    assert exit_info.value.code == 2
    assert "needs a bearer token" in capsys.readouterr().err


def test_mirror_tta_is_a_setting_and_reaches_the_predictor(monkeypatch):
    from serve.service import open_predictor

    assert ServeSettings(package=PACKAGE).tta == "none"
    monkeypatch.setenv("DISTILL_SERVE_TTA", "mirror8")
    settings = ServeSettings(package=PACKAGE, threads=1)
    assert settings.tta == "mirror8" and open_predictor(settings).tta == "mirror8"
    with pytest.raises(ValidationError, match="mirror8"):
        ServeSettings(package=PACKAGE, tta="mirror4")
