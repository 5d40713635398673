"""``python -m service``: its flags, their help, and how bad values are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
import uvicorn

import service.app
from service import __main__ as cli
from service.settings import Settings


def test_help_lists_every_setting_with_its_environment_variable():
    # A description holding "%" once made argparse's help raise instead of printing.
    done = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines anywhere
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text
        assert f"MACHADO_{name.upper()}" in text
    assert "42 % fewer" in text


@pytest.fixture
def served(monkeypatch):
    """Run main() up to uvicorn.run, keeping what it would have served."""
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))
    monkeypatch.setattr(service.app, "create_app", lambda settings: settings)
    return calls


def test_flags_win_over_the_environment(monkeypatch, served):
    monkeypatch.setenv("MACHADO_PORT", "1234")
    monkeypatch.setenv("MACHADO_MAX_BATCH_ROWS", "4")
    assert cli.main(["--port", "4321", "--kv-cache", "false", "--quantize", "int8"]) == 0
    [(settings, options)] = served
    assert (settings.port, settings.max_batch_rows) == (4321, 4)
    assert settings.kv_cache is False and settings.quantize == "int8"
    assert (options["host"], options["port"]) == (settings.host, 4321)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--port", "70000"], "MACHADO_PORT (--port): Input should be less than or equal to 65535"),
        (["--threads", "0"], "MACHADO_THREADS (--threads): Input should be greater than or equal"),
        (["--kv-cache", "sometimes"], "MACHADO_KV_CACHE (--kv-cache): Input should be a valid"),
    ],
)
def test_an_out_of_range_setting_exits_2_naming_it(served, capsys, argv, says):
    """The error names the variable and its flag, says what was wrong, and what the setting
    is (its help)."""
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    name = argv[0][2:].replace("-", "_")
    assert error.startswith(f"error: invalid setting {says}"), error
    assert Settings.model_fields[name].description in error, error
    assert served == []


def test_a_bad_api_key_is_refused_naming_its_rule_not_echoing_it(served, capsys):
    """The error names the variable and what a key may hold, and keeps the key to itself."""
    assert cli.main(["--api-key", "minha chave"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: invalid setting MACHADO_API_KEY (--api-key)"), error
    assert "Letters, digits and -._~+/" in error and "minha chave" not in error, error
    assert served == []


@pytest.mark.parametrize(
    "argv", [["--port", "eighty"], ["--provider", "tpu"], ["--no-such-flag", "1"]]
)
def test_a_malformed_flag_is_an_argparse_usage_error(served, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage: python -m service" in capsys.readouterr().err
    assert served == []
