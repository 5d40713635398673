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
        (["--port", "70000"], "port"),
        (["--threads", "0"], "threads"),
        (["--kv-cache", "sometimes"], "kv_cache"),
    ],
)
def test_an_out_of_range_setting_exits_2_naming_it(served, capsys, argv, says):
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: invalid setting") and says in error
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
