"""`affect --help` answers at once: the CLI module imports no heavy layer until a command runs."""

import os
import re
import subprocess
import sys

import pytest


def test_help_lists_every_stage_and_imports_nothing_heavy():
    code = (
        "import sys, affect_cli.main as m\n"
        "names = ('torch', 'ray', 'prefect', 'pyarrow', 'numpy', 'affect_core.model')\n"
        "heavy = [n for n in names if n in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    from typer.testing import CliRunner

    from affect_cli.main import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "ingest", "train", "score", "evaluate", "demo"):
        assert command in result.output


@pytest.mark.parametrize("command", ["demo", "score", "train", "pipeline"])
def test_help_is_readable_at_80_columns(command: str) -> None:
    """Every option's name is printed whole (nothing cut with "…" or wrapped mid-name) and no line is wider than
    the terminal."""
    import typer

    from affect_cli.main import app

    env = {**os.environ, "COLUMNS": "80", "TERMINAL_WIDTH": "80"}
    result = subprocess.run(
        [sys.executable, "-m", "affect_cli.main", command, "--help"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "…" not in result.stdout
    printed = set(re.findall(r"--[a-z0-9][a-z0-9-]*", result.stdout))
    options = {
        name
        for p in typer.main.get_command(app).commands[command].params
        for name in p.opts + p.secondary_opts
        if name.startswith("--")
    }
    assert options <= printed, sorted(options - printed)
