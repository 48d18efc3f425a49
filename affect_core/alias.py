"""Model aliases: a URL that names the model in use (``affect promote MODEL_URL ALIAS_URL``).

An alias is one small JSON file, ``ALIAS_URL/alias.json``, rewritten whole and atomically by every change (one object
PUT on S3, a rename on a file system), so a reader sees the old alias or the new one, never a mix::

    {"model": "<the model bundle URL in use>",
     "history": [{"action": "promote" | "rollback", "model": "<bundle URL>", "model_id": "...", "at": "<UTC time>"},
                 ...]}                                   oldest first, every promotion and rollback kept

A rollback makes the model promoted before the current one current again (a second rollback goes one further back).
Wherever a model bundle URL is read (``affect score --model``, the scoring flows), an alias URL may stand in for it:
:func:`resolve_model` follows it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from affect_core.errors import AffectError
from affect_core.storage import Location, Where, exists, read_bytes, redact, resolve, write_bytes_atomic

ALIAS_FILE = "alias.json"


@dataclass
class AliasState:
    """An alias after a change: the model it names and every change so far (oldest first)."""

    alias_url: str
    model: str
    history: list[dict[str, Any]]


def read_alias(alias_url: Where, storage_options: dict[str, Any] | None = None) -> AliasState | None:
    """The alias at ``alias_url`` (a URL resolved here, or a Location resolved before), or None when there is
    none."""
    loc = resolve(alias_url, storage_options)
    path = loc.join(ALIAS_FILE).path
    if not exists(loc.fs, path):
        return None
    try:
        data = json.loads(read_bytes(loc.fs, path))
        return AliasState(loc.display(), str(data["model"]), list(data["history"]))
    except (ValueError, KeyError, TypeError):
        raise AffectError(
            f"{loc.display(ALIAS_FILE)}: not a model alias (expected JSON with model and history)"
        ) from None


def resolve_model(url: Where, storage_options: dict[str, Any] | None = None) -> Location:
    """The model bundle that ``url`` names: the alias's model when ``url`` is an alias, else ``url`` itself.
    ``storage_options`` resolve ``url`` when it is a URL, and the model URL an alias names."""
    given = resolve(url, storage_options)
    alias = read_alias(given)
    return resolve(alias.model, storage_options) if alias is not None else given


def promote(model_url: Where, alias_url: Where, storage_options: dict[str, Any] | None = None) -> AliasState:
    """Make ``alias_url`` name the model bundle at ``model_url`` (which must load); the earlier history is kept.
    Each URL is resolved here, once, with ``storage_options`` (a Location given instead was resolved before)."""
    from affect_core.artifact import load_bundle

    model, alias = resolve(model_url, storage_options), resolve(alias_url, storage_options)
    if read_alias(model) is not None:
        raise AffectError(f"{model.display()}: an alias, not a model bundle; promote the model it names")
    bundle = load_bundle(model)
    previous = read_alias(alias)
    history = previous.history if previous is not None else []
    entry = {"action": "promote", "model": model.url, "model_id": bundle.model_id, "at": _now()}
    return _write(alias, model.url, [*history, entry])


def rollback(alias_url: Where, storage_options: dict[str, Any] | None = None) -> AliasState:
    """Make ``alias_url`` name the model it named before the current one was promoted."""
    alias = resolve(alias_url, storage_options)
    current = read_alias(alias)
    if current is None:
        raise AffectError(f"{alias.display()}: no model alias here to roll back")
    chain = promoted_chain(current.history)
    if len(chain) < 2:
        raise AffectError(
            f"{current.alias_url}: names its first model ({redact(chain[-1]['model'])}); nothing to roll back to"
        )
    earlier = chain[-2]
    entry = {"action": "rollback", "model": earlier["model"], "model_id": earlier.get("model_id"), "at": _now()}
    return _write(alias, earlier["model"], [*current.history, entry])


def promoted_chain(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The promotions still in force, oldest first (each rollback undoes the latest one); the last is current."""
    chain: list[dict[str, Any]] = []
    for entry in history:
        if entry["action"] == "promote":
            chain.append(entry)
        elif entry["action"] == "rollback" and len(chain) > 1:
            chain.pop()
    return chain


def _write(loc: Location, model_url: str, history: list[dict[str, Any]]) -> AliasState:
    data = {"model": model_url, "history": history}
    write_bytes_atomic(loc.fs, loc.join(ALIAS_FILE).path, json.dumps(data, indent=2).encode())
    return AliasState(loc.display(), model_url, history)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
