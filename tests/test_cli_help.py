"""`affect --help` answers at once: the CLI module imports no heavy layer until a command runs."""

import subprocess
import sys


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
