"""Prefect artifacts of the flow runs: markdown tables of what a run produced and links to its files.

Every URL goes through :func:`affect_core.storage.redact` first; artifacts never carry keys or tokens (the
flows never receive them: credentials stay in the environment). Keys are stable per kind of result
(``affect-train-results``, ``affect-report-ablation``, ...) so that the Prefect UI shows each one's history.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact

from affect_core.storage import redact


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free text."""
    text = "-".join(p for p in parts if p)
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100]


def browsable(url: str) -> str:
    """A link for the UI: ``file://`` plus the absolute path for a local path, else the URL (redacted)."""
    text = redact(str(url))
    if "://" in text:
        return text
    return "file://" + os.path.abspath(text)


def publish_markdown(key: str, markdown: str, description: str) -> str:
    """Create a markdown artifact; returns the markdown (handy for tests and logs)."""
    create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)
    return markdown


def publish_link(key: str, url: str, text: str, description: str = "") -> str:
    """Create a link artifact to ``url``; returns the link."""
    link = browsable(url)
    create_link_artifact(link=link, link_text=text, key=artifact_key(key), description=description or text)
    return link


def ingest_markdown(result: dict[str, Any]) -> str:
    """What an ingest did, as markdown."""
    state = "unchanged (skipped: same content hash as the latest version)" if result["unchanged"] else "new version"
    return (
        "\n".join(
            [
                "# Ingest",
                "",
                "| dataset | version | state | videos | rows | content hash |",
                "|---|---|---|---|---|---|",
                f"| {redact(result['dataset_url'])} | {result['version']} | {state} | {result['videos']} | "
                f"{result['rows']} | `{result['content_hash']}` |",
            ]
        )
        + "\n"
    )


def tune_markdown(outcome: Any, trials_table: str) -> str:
    """A search's outcome and its best trials, as markdown."""
    lines = [
        "# Tuning",
        "",
        f"Trials: {outcome.trials} ({outcome.stopped_early} stopped early, {outcome.errored} failed); "
        f"best dev CCC: {outcome.best_dev_ccc:.4f} (trial {outcome.best_trial})",
        "",
        f"Best configuration: `{redact(outcome.best_config_url)}`",
    ]
    if trials_table:
        lines += ["", trials_table]
    return "\n".join(lines) + "\n"


def score_markdown(result: dict[str, Any], evaluation: str | None) -> str:
    """A scoring job and, where labels exist, its evaluation (AVEC protocol), as markdown."""
    lines = [
        "# Scoring",
        "",
        "| predictions | videos | frames scored | already done | seconds |",
        "|---|---|---|---|---|",
        f"| {redact(result['url'])} | {result['videos']} | {result['frames']} | {result['skipped']} | "
        f"{result['seconds']:.1f} |",
    ]
    if evaluation:
        lines += ["", "## Evaluation against the gold standard", "", evaluation.rstrip("\n")]
    return "\n".join(lines) + "\n"
