"""``python -m service``: its flags, their help, and how bad values are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
import uvicorn

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


def test_help_prints_a_description_holding_a_percent_sign(monkeypatch):
    """argparse formats help with %: a description holding one once made --help raise."""
    from service.__main__ import build_parser

    field = Settings.model_fields["threads"]
    monkeypatch.setattr(field, "description", "threads (100 % of a core each)")
    assert "100 % of a core each" in build_parser(Settings()).format_help()


@pytest.fixture
def served(monkeypatch):
    """Run main() up to the server's start (the app is made, its models not loaded), keeping
    the settings and the server's configuration."""
    calls = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda server: calls.append((server.config.app, server.config))
    )
    return calls


def test_flags_win_over_the_environment(monkeypatch, served):
    monkeypatch.setenv("MACHADO_PORT", "1234")
    monkeypatch.setenv("MACHADO_MAX_BATCH_ROWS", "4")
    assert cli.main(["--port", "4321", "--kv-cache", "false", "--quantize", "int8"]) == 0
    [(app, config)] = served
    settings = app.state.settings
    assert (settings.port, settings.max_batch_rows) == (4321, 4)
    assert settings.kv_cache is False and settings.quantize == "int8"
    assert (config.host, config.port) == (settings.host, 4321)


def test_server_takes_its_limits_from_the_settings(served):
    """The drain time, the head size limit and the connection guards reach uvicorn."""
    argv = ["--drain-timeout-s", "7", "--max-head-bytes", "4096", "--send-timeout-s", "3"]
    assert cli.main(argv) == 0
    [(_, config)] = served
    assert config.timeout_graceful_shutdown == 7
    assert config.h11_max_incomplete_event_size == 4096
    assert config.http.keywords["send_timeout"] == 3


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


@pytest.fixture
def logging_left_alone(monkeypatch):
    """main() configures logging for the whole process, as a server does: not in the tests'
    process, whose later tests read the service's log records."""
    import logging.config

    monkeypatch.setattr(logging.config, "dictConfig", lambda config: None)


@pytest.mark.slow
def test_check_runs_every_model_once_and_exits_0():
    """--check loads the shipped models as serving would and probes each: one line each."""
    done = subprocess.run(
        [sys.executable, "-m", "service", "--check", "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    for name in ("attention", "attention-seed", "bengio"):
        [line] = [line for line in out if line.startswith(f"{name}: ")]
        assert line.startswith(f"{name}: ok on CPUExecutionProvider (float32): "), line
    assert out[-1] == "3 of 3 models ok"


def test_check_of_a_damaged_model_exits_1_naming_it(tmp_path, capsys, logging_left_alone):
    """A model that fails to load fails the check, and the others are still checked."""
    import shutil

    from tests.service.conftest import MODELS

    shutil.copy(MODELS / "tokenizer.json", tmp_path / "tokenizer.json")
    for name in ("attention-seed", "bengio"):
        shutil.copytree(MODELS / name, tmp_path / name)
    with (tmp_path / "bengio" / "weights.bin").open("r+b") as weights:
        weights.truncate(1000)
    argv = ["--check", "--models-dir", str(tmp_path), "--log-level", "error"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("attention-seed: ok on "), out
    assert out[1].startswith("bengio: FAILED to load: ValueError: weights.bin has 1,000 bytes")
    assert out[-1] == "1 of 2 models ok"


@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_check_without_models_exits_1_saying_why(tmp_path, capsys, folder, logging_left_alone):
    models = tmp_path / folder
    if folder == "empty":
        models.mkdir()
    assert cli.main(["--check", "--models-dir", str(models), "--log-level", "error"]) == 1
    what = "holds no model folder" if folder == "empty" else "does not exist"
    assert f"error: the models directory {models} {what}" in capsys.readouterr().err
