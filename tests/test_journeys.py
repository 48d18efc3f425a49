"""The documentation's shell journeys, run exactly as the pages print them (tests/journeys.py reads them).

Each journey marked in README.md or docs/*.md is run by one test here, which also checks what the page says it
leaves behind; a marked journey without a test, or a shell block with no marker, fails
:func:`test_every_shell_block_is_a_journey_or_says_why_it_cannot_run`, so a page cannot drift from what runs. Blocks
that need what this machine lacks (Docker, Kubernetes, real S3) are listed, with why, by
:func:`test_blocks_not_runnable_here_are_listed_with_why`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.journeys import REPO, JourneyRun, journey_script, journeys, run_journey, shell_blocks

COMPLETED = "Flow run finished successfully in 'Completed'."
# What the schedules journey may cut down in a deployment's job (its `--params`); everything else stays as deployed.
SIZES = {"num_samples", "epochs", "seeds"}


def check_quick_start(run: JourneyRun) -> None:
    """`make demo`: the pipeline ran on a generated corpus under ./demo-output, with its report, predictions and
    results where it prints them."""
    demo = run.directory / "demo-output"
    assert "pipeline finished in" in run.stdout
    assert (demo / "corpus").is_dir() and (demo / "dataset" / "_delta_log").is_dir()
    assert (demo / "run" / "results.parquet").is_file() and (demo / "run" / "model" / "bundle.json").is_file()
    assert (demo / "run" / "report" / "summary.md").is_file()
    assert list((demo / "run" / "predictions" / "_delta_log").glob("*.json"))


def check_video(run: JourneyRun) -> None:
    """docs/video.md: clips -> dataset -> model with its video transform -> predictions for every clip."""
    assert (run.directory / "data" / "_delta_log").is_dir()
    assert (run.directory / "run" / "model" / "bundle.json").is_file()
    assert list((run.directory / "pred" / "_delta_log").glob("*.json"))
    clips = sorted(path.stem for path in (run.directory / "clips" / "videos").iterdir())
    assert re.search(rf"scored {len(clips)} video\(s\)", run.stdout), run.stdout[-2000:]


def check_local_stack(run: JourneyRun) -> None:
    """docs/deploy.md's local stack: up, a pipeline on its S3 and Ray, its outputs listed from S3, then down with
    nothing left running."""
    assert "pipeline finished in" in run.stdout
    assert "s3://affect/runs/demo" in run.stdout


def check_schedules(run: JourneyRun) -> None:
    """docs/flows.md's schedules: the four deployments, run by hand in order, each completed and wrote where its
    description says (the page lists the outputs before stopping the stack)."""
    finished = [line for line in run.stdout.splitlines() if COMPLETED in line]
    assert len(finished) == 4, run.stdout[-3000:]
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    assert re.search(r"^s3://affect/dataset: dataset version \d+", run.stdout, re.M), run.stdout[-3000:]
    assert re.search(rf"^s3://affect/predictions/{today}: predictions", run.stdout, re.M), run.stdout[-3000:]
    assert f"s3://affect/tuning/{today}/best_config.yaml" in run.stdout
    assert re.search(r"^s3://affect/runs/[^/]+/model/bundle\.json$", run.stdout, re.M), run.stdout[-3000:]
    assert "s3://affect/models/current/alias.json" in run.stdout


# Journey name -> (the check of what it leaves, its time limit in seconds).
CHECKS: dict[str, tuple[Callable[[JourneyRun], None], float]] = {
    "quick-start": (check_quick_start, 900),
    "video": (check_video, 600),
    "local-stack": (check_local_stack, 900),
    "schedules": (check_schedules, 1500),
}


def test_every_shell_block_is_a_journey_or_says_why_it_cannot_run() -> None:
    blocks = shell_blocks()
    unmarked = [block.where for block in blocks if not block.marker]
    assert unmarked == [], "shell blocks with neither <!-- journey: NAME --> nor <!-- not runnable here: WHY -->"
    marked = set(journeys())
    assert marked - set(CHECKS) == set(), "journeys in the docs that no test runs"
    assert set(CHECKS) - marked == set(), "tests of journeys that no page marks any more"


def without_sizes(job: object) -> object:
    """``job`` with the :data:`SIZES` fields left out, at every level of nesting."""
    if isinstance(job, dict):
        return {key: without_sizes(value) for key, value in job.items() if key not in SIZES}
    return job


def test_the_schedules_journey_runs_every_deployment_as_deployed_but_for_its_sizes() -> None:
    runs = re.findall(
        r"prefect deployment run (\S+)/(\S+) --watch(?: --params '(.*?)')?", journey_script("schedules"), re.S
    )
    deployments = {
        entry["name"]: entry for entry in yaml.safe_load((REPO / "schedules.yaml").read_text())["deployments"]
    }
    assert [name for _, name, _ in runs] == list(deployments), "every deployment, in the file's (schedule) order"
    for flow, name, params in runs:
        assert flow == f"affect-{deployments[name]['flow']}"
        if params:
            job, deployed = json.loads(params)["job"], deployments[name]["parameters"]["job"]
            assert without_sizes(job) == without_sizes(deployed), f"{name}: --params changes more than sizes"


def test_blocks_not_runnable_here_are_listed_with_why() -> None:
    skipped = [block for block in shell_blocks() if block.marker == "not-runnable"]
    for block in skipped:
        assert re.match(r"needs \S", block.value), f"{block.where}: say what it needs ('needs docker', ...)"
    listing = "\n".join(f"not runnable here: {block.where}: {block.value}" for block in skipped)
    print(listing)
    assert skipped, "every page's blocks ran here; drop this test"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(CHECKS) - {"local-stack", "schedules"}))
def test_journey(name: str, tmp_path: Path) -> None:
    check, timeout_s = CHECKS[name]
    run = run_journey(name, tmp_path, timeout_s=timeout_s)
    assert run.returncode == 0, run.describe()
    check(run)
    assert run.left_running == []


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.parametrize("name", ["local-stack", "schedules"])
def test_journey_on_the_local_stack(name: str, tmp_path: Path) -> None:
    check, timeout_s = CHECKS[name]
    run = run_journey(name, tmp_path, timeout_s=timeout_s)
    assert run.returncode == 0, run.describe()
    check(run)
    assert run.left_running == [], "make stack-down left processes running"
