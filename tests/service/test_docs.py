"""The documents: every setting with its default, every file in the layout, a README that
fits a newcomer, benchmarks without history."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_settings_doc_is_the_settings_table():
    """docs/settings.md holds the table `python -m service --settings-table` writes: every
    setting with its default and description, as the service runs with them."""
    doc = (ROOT / "docs" / "settings.md").read_text()
    assert settings_table() in doc
    example = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        if name not in ("host", "port"):
            assert f"MACHADO_{name.upper()}" in example, name


def test_settings_help_gives_no_figures():
    """A setting's help says what it does, its unit and default; measured figures (a speed-up,
    a percentage, megabytes held) belong in BENCHMARKS.md, where they are kept current."""
    measured = re.compile(r"\d+(\.\d+)?x\b|\d+ ?%|MiB|BENCHMARKS")
    for name, field in Settings.model_fields.items():
        assert not measured.search(field.description or ""), (name, field.description)


def test_readme_fits_a_newcomer():
    """The README stays short (16 KB) and shows the two commands on its first screen."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 16 * 1024, len(readme.encode())
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "bash scripts/serve.sh" in first_screen and "bash scripts/test.sh" in first_screen


def test_benchmarks_name_no_commits():
    """BENCHMARKS.md gives current figures with their commands, not the history of the code."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    hashes = re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text)
    assert not hashes, hashes[:10]


def test_readme_layout_names_every_module_and_script():
    """A module or script added without its place in the README's Layout is missed here."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    files = [
        f
        for package in ("runtime", "service", "training", "bench")
        for f in (ROOT / package).iterdir()
        if f.is_file() and f.suffix in (".py", ".sh")
    ]
    files += [f for f in (ROOT / "scripts").iterdir() if f.is_file()]
    missing = [
        str(f.relative_to(ROOT)) for f in files if f.name != "__init__.py" and f.name not in layout
    ]
    assert not missing, missing


def test_compose_stop_grace_period_covers_the_drain():
    """docker compose stop sends SIGTERM, then SIGKILL after stop_grace_period: the period must
    outlast the drain time (the default, and the one .env.example sets), with room to exit."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    example = (ROOT / ".env.example").read_text()
    drain = float(re.search(r"^MACHADO_DRAIN_TIMEOUT_S=(\S+)", example, re.M).group(1))
    drain = max(drain, Settings.model_fields["drain_timeout_s"].default)
    for name in ("api", "api-gpu"):
        grace = compose["services"][name]["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) >= drain + 5, (name, grace, drain)


def test_compose_passes_every_setting_with_the_service_default():
    """docker-compose.yml gives the container every setting, from .env or the shell, else the
    service's own default (host, port, models folder and provider are the image's)."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = compose["services"]["api"]["environment"]
    assert environment == compose["services"]["api-gpu"]["environment"]
    for name, field in Settings.model_fields.items():
        if name in ("host", "port", "models_dir", "provider"):
            continue
        default = field.default
        written = (
            ""
            if default is None
            else str(default).lower()
            if default is True or default is False
            else str(default)
        )
        assert environment[f"MACHADO_{name.upper()}"] == f"${{MACHADO_{name.upper()}:-{written}}}"
