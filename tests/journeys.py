"""The shell journeys the documentation shows a user, read from the Markdown and run as written.

Every fenced shell block (```` ```bash ````, ``sh``, ``shell``, ``console``) in README.md and docs/*.md carries one
HTML comment on the line right before its fence, invisible on GitHub:

- ``<!-- journey: NAME -->``: the block is part of journey NAME. The blocks of one journey (on one page, in page
  order) are one bash script, run with ``bash -euo pipefail``;
- ``<!-- not runnable here: WHY -->``: the block needs what the development machines do not have (a Docker engine,
  a Kubernetes cluster, real S3 credentials); WHY says what.

A journey runs in a fresh temporary directory laid out as a checkout that has been installed: the repository's
tracked top-level files and folders are linked into it, so ``make demo`` and ``make -s stack-up`` work there and write
their outputs (``demo-output``, ``.stack``) into it, never into the shared tree; its ``.venv`` links the project's
virtualenv with its own install stamp, so that make does not reinstall. The environment is what a new user has: PATH
with that ``.venv/bin`` first, a home of its own, and nothing else set by the tests.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCE = re.compile(r"^```(bash|sh|shell|console)\b.*$")
JOURNEY_MARK = re.compile(r"^<!--\s*journey:\s*([A-Za-z0-9_-]+)\s*-->\s*$")
NOT_RUNNABLE_MARK = re.compile(r"^<!--\s*not runnable here:\s*(.+?)\s*-->\s*$")
# Environment variables a user's shell has that say nothing about this project.
USER_ENV = ("LANG", "LC_ALL", "TERM", "USER", "LOGNAME", "SHELL", "TZ")


@dataclass(frozen=True)
class ShellBlock:
    """One fenced shell block of a page: its marker (``journey`` or ``not-runnable``), the marker's value (the
    journey's name, or why it cannot run here; empty when unmarked) and its text."""

    page: Path
    line: int
    marker: str
    value: str
    script: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def shell_blocks(pages: list[Path] = PAGES) -> list[ShellBlock]:
    """Every fenced shell block of ``pages``, in page order, with the marker on the line before its fence."""
    found = []
    for page in pages:
        lines = page.read_text().splitlines()
        index = 0
        while index < len(lines):
            if not SHELL_FENCE.match(lines[index]):
                index += 1
                continue
            end = next((j for j in range(index + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            before = lines[index - 1] if index else ""
            marker, value = "", ""
            if journey := JOURNEY_MARK.match(before):
                marker, value = "journey", journey.group(1)
            elif reason := NOT_RUNNABLE_MARK.match(before):
                marker, value = "not-runnable", reason.group(1)
            found.append(ShellBlock(page, index + 1, marker, value, "\n".join(lines[index + 1 : end]) + "\n"))
            index = end + 1
    return found


def journeys(pages: list[Path] = PAGES) -> dict[str, list[ShellBlock]]:
    """The marked journeys by name, each its blocks in page order."""
    grouped: dict[str, list[ShellBlock]] = {}
    for block in shell_blocks(pages):
        if block.marker == "journey":
            grouped.setdefault(block.value, []).append(block)
    return grouped


def journey_script(name: str) -> str:
    """Journey ``name``'s blocks as one script, each block introduced by a comment naming where it is."""
    blocks = journeys()[name]
    return "".join(f"# {block.where}\n{block.script}" for block in blocks)


def make_checkout(directory: Path) -> Path:
    """``directory`` laid out as an installed checkout (see the module docstring); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in tracked_top_level():
        (directory / name).symlink_to(REPO / name)
    venv = directory / ".venv"
    venv.mkdir()
    for entry in VENV.iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()  # newer than pyproject.toml: `make install` has nothing to do
    return directory


def tracked_top_level() -> list[str]:
    """The repository's top-level files and folders that git tracks: what a fresh clone holds."""
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted({path.split("/", 1)[0] for path in listed.splitlines() if path})


def user_env(home: Path) -> dict[str, str]:
    """A new user's environment: the checkout's ``.venv/bin`` first on PATH, a home of their own, the locale."""
    home.mkdir(parents=True, exist_ok=True)
    system_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {name: os.environ[name] for name in USER_ENV if name in os.environ}
    env.update({"HOME": str(home), "PATH": os.pathsep.join([str(VENV / "bin"), system_path])})
    return env


@dataclass(frozen=True)
class JourneyRun:
    """A journey's exit status and output, the directory it ran in, and the processes it left running when it ended
    (of its process group, or recorded by a local stack it started; all stopped since)."""

    returncode: int
    stdout: str
    stderr: str
    directory: Path
    left_running: list[int]

    def describe(self) -> str:
        """The end of its output, for an assertion message."""
        return f"exit {self.returncode}\n--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-6000:]}"


def run_journey(name: str, tmp_path: Path, *, timeout_s: float) -> JourneyRun:
    """Run journey ``name`` with ``bash -euo pipefail`` in a fresh checkout under ``tmp_path``. Whatever it leaves
    running when it fails (its process group; a local stack it started) is stopped before this returns."""
    directory = make_checkout(tmp_path / "checkout")
    script = tmp_path / f"{name}.sh"
    script.write_text(journey_script(name))
    # Output goes to files, not pipes: a service the journey starts inherits them, and a pipe would stay open (and
    # a reader blocked) for as long as that service runs when the journey fails before stopping it.
    stdout_path, stderr_path = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
    with stdout_path.open("w") as stdout_file, stderr_path.open("w") as stderr_file:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", str(script)],
            cwd=directory,
            env=user_env(tmp_path / "home"),
            stdin=subprocess.DEVNULL,
            stdout=stdout_file,
            stderr=stderr_file,
            start_new_session=True,
        )
    stopped = ""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        stopped = f"\n[journey {name} stopped after {timeout_s:.0f} s]"
    finally:
        left_running = still_running(process.pid, directory)
        stop_leftovers(process.pid, directory)
    stdout = stdout_path.read_text(errors="replace")
    stderr = stderr_path.read_text(errors="replace") + stopped
    return JourneyRun(process.returncode, stdout, stderr, directory, left_running)


def still_running(group: int, directory: Path) -> list[int]:
    """Live processes of process group ``group`` and of the local stack recorded under ``directory/.stack``."""
    import psutil

    from affect_services.stack import recorded_pids_alive

    state = directory / ".stack" / "state.json"
    alive = set(recorded_pids_alive(state.parent)) if state.exists() else set()
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                alive.add(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return sorted(alive)


def stop_leftovers(group: int, directory: Path) -> None:
    """Stop a local stack the journey started and did not stop, then what is left of its process group."""
    if (directory / ".stack" / "state.json").exists():
        subprocess.run(
            [sys.executable, "-m", "affect_services", "down", str(directory / ".stack")],
            cwd=REPO,
            capture_output=True,
            timeout=180,
        )
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        time.sleep(2)
