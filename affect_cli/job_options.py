"""Typer commands derived from the job descriptions of :mod:`flows.jobs`: one option per field of the job (help text,
argument or option, spelling and lower bound from the field), so an option added to a job reaches ``affect`` with no
second signature to keep in step. A sub-job's fields (the pipeline's steps) become options spelled with its prefix,
except those the pipeline sets itself (``flows.jobs.PIPELINE_WIRING``)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from flows.jobs import PIPELINE_WIRING, is_job, job_fields


def _parameter(name: str, field: dataclasses.Field, hint: Any, *, allow_required: bool) -> inspect.Parameter:
    meta = field.metadata
    bounds = {"min": meta["min"]} if "min" in meta else {}
    required = bool(meta.get("required")) and allow_required
    if meta.get("argument") and allow_required:
        info = typer.Argument(help=meta.get("help", ""), show_default=False)
    else:
        flag = meta.get("flag")
        if flag and name != field.name:  # a step's option keeps its prefix (--tune-... / --score-...)
            flag = None
        declarations = [flag] if flag else []
        parsing = {"parser": meta["parse"], "metavar": "VALUE"} if "parse" in meta else {}
        info = typer.Option(*declarations, help=meta.get("help", ""), **bounds, **parsing)
        if parsing:
            hint = str  # the field's own parser turns the text into its value (a number or a keyword)
    if required:
        hint = str  # a required URL: the dataclass's "" default is only for a pipeline to fill in
    default = inspect.Parameter.empty if required else _default(field)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, info])


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return field.default


def _parameters(kind: type, prefix: str = "", *, top: bool = True) -> list[inspect.Parameter]:
    """A keyword parameter for every command-line argument and option of a job, in field order."""
    out = []
    for field, hint in job_fields(kind):
        if is_job(hint):
            out += _parameters(hint, prefix + field.metadata.get("prefix", ""), top=False)
            continue
        if not top and field.name in PIPELINE_WIRING:
            continue
        name = (prefix + field.name).replace("-", "_")
        out.append(_parameter(name, field, hint, allow_required=top))
    return out


def build_job(kind: type, values: dict[str, Any], prefix: str = "", *, top: bool = True) -> Any:
    """The job of ``kind`` from the command's keyword arguments (as :func:`job_command` names them). A relative local
    path in a URL field is made absolute against the shell's working directory (the job's work may run elsewhere)."""
    from affect_core.storage import absolute_local

    kwargs = {}
    for field, hint in job_fields(kind):
        if is_job(hint):
            kwargs[field.name] = build_job(hint, values, prefix + field.metadata.get("prefix", ""), top=False)
            continue
        name = (prefix + field.name).replace("-", "_")
        if name in values and (top or field.name not in PIPELINE_WIRING):
            value = values[name]
            kwargs[field.name] = absolute_local(value) if field.metadata.get("url") and value else value
    return kind(**kwargs)


def job_command(kind: type, run: Callable[[Any], None]) -> Callable[..., None]:
    """A typer command for the job class ``kind`` that builds the job from its options and calls ``run(job)``.
    Its help is the job's docstring."""
    parameters = _parameters(kind)
    names = [p.name for p in parameters]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise TypeError(f"{kind.__name__}: two command-line options share a name: {twice}")

    def command(**values: Any) -> None:
        run(build_job(kind, values))

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = inspect.getdoc(kind)
    command.__name__ = kind.__name__.removesuffix("Job").lower()
    return command
