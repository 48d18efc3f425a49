"""One place that turns a URL into a filesystem: fsspec for files, pyarrow for ``pyarrow.dataset``.

A URL is a local path (the default), ``file://``, ``s3://``, ``memory://`` or any other fsspec URL. S3
endpoints are passed explicitly: ``storage_options["endpoint_url"]`` (or ``client_kwargs.endpoint_url``), else
the environment variable ``AFFECT_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``. Keys come from the environment
(botocore's usual variables) or from ``storage_options``, never from the URL (a ``user:password@`` URL is refused);
they are never put into messages: every URL shown to a user goes through :func:`redact`. Work on Ray takes keys from
the environment of its nodes only (tuning/cluster.py).

A URL is resolved once, where a job enters the library: an entry point (``score_dataset``, ``ingest``, ``train_run``,
``write_report``, ...) takes a :class:`Location` or a URL plus ``storage_options`` and calls :func:`resolve`, which
hands a Location back unchanged, so calling it again is free; every function below an entry point takes the Location
(or a :class:`affect_core.data.delta.VersionedLocation`), never ``(url, storage_options)``. The job runners
(flows/jobs.py) resolve each of a job's URLs once, with the job's S3 endpoint. Ray is the one boundary a Location does
not cross: a Ray task, actor or Tune trial gets URLs plus credential-free options (tuning/cluster.py
``shareable_storage_options``) and resolves them once on its side, because a pickled filesystem would carry the
driver's credentials into Ray's object store and logs."""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from affect_core.errors import AffectError

S3_ENDPOINT_ENV = ("AFFECT_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3")
_SECRET_KEYS = re.compile(r"(secret|token|password|key|signature|credential)", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
# A URL whose authority holds a password (scheme://user:password@...); user@ alone, or URL@VERSION, is no secret.
_URL_PASSWORD = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s]*:[^/@\s]*@")


def redact(url: str) -> str:
    """``url`` with any ``user:password@`` part and secret-looking query parameters removed, safe for
    messages."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>", str(url))
    if "?" in text:
        base, _, query = text.partition("?")
        kept = [p for p in query.split("&") if not _SECRET_KEYS.search(p.split("=", 1)[0])]
        text = base + ("?" + "&".join(kept) if kept else "")
    return text


def s3_storage_options(storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """s3fs options with the endpoint made explicit (storage options, then ``AFFECT_S3_ENDPOINT``, then
    ``AWS_ENDPOINT_URL_S3``); credentials are left to botocore's environment lookup unless given."""
    options = dict(storage_options or {})
    client_kwargs = dict(options.pop("client_kwargs", None) or {})
    endpoint = options.pop("endpoint_url", None) or client_kwargs.get("endpoint_url")
    if not endpoint:
        endpoint = next((os.environ[name] for name in S3_ENDPOINT_ENV if os.environ.get(name)), None)
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


@dataclass(frozen=True)
class Location:
    """A filesystem and a path inside it, plus the user's URL (redacted) for messages.

    ``path`` is in the filesystem's own notation (no protocol for s3/memory, absolute for local files)."""

    fs: fsspec.AbstractFileSystem
    path: str
    url: str

    @property
    def protocol(self) -> str:
        protocol = self.fs.protocol
        return protocol[0] if isinstance(protocol, (tuple, list)) else str(protocol)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def join(self, *parts: str) -> Location:
        """The location of ``parts`` below this one (parts are '/'-separated relative names)."""
        path = join(self.path, *parts)
        url = join(self.url, *parts)
        return Location(self.fs, path, url)

    def display(self, *parts: str) -> str:
        """A redacted URL for messages, optionally of a child."""
        return redact(join(self.url, *parts)) if parts else redact(self.url)

    def exists(self, *parts: str) -> bool:
        return exists(self.fs, join(self.path, *parts))

    def arrow_filesystem(self) -> pafs.FileSystem:
        return arrow_filesystem(self.fs)


def absolute_local(url: str) -> str:
    """``url`` with a relative local path made absolute against this process's working directory; any URL with a
    scheme (s3://, memory://, file://) is returned as it is. A job's work may run in other processes whose working
    directory is not the user's (Ray's workers run in their trial's folder, a Ray job's driver on the head), so the
    command line hands them absolute paths."""
    text = str(url)
    if not text or "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def join(base: str, *parts: str) -> str:
    """Join '/'-separated path parts onto a path or URL without doubling or dropping separators."""
    out = str(base)
    for part in parts:
        part = str(part).strip("/")
        if not part:
            continue
        out = out.rstrip("/") + "/" + part if out not in ("", "/") else (out + part)
    return out


Where = str | os.PathLike[str] | Location
"""What an entry point accepts for a place in storage: a URL (or local path), or a Location resolved before."""


def resolve(url: Where, storage_options: Mapping[str, Any] | None = None) -> Location:
    """Turn a URL (or local path) plus storage options into a :class:`Location`; a Location is returned unchanged
    (it was resolved where the job entered: ``storage_options`` are then not looked at), so an entry point can call
    this whatever its caller passed.

    Raises AffectError for an empty URL, a URL with a ``user:password@`` part, or an unknown protocol; the message
    never contains credentials."""
    if isinstance(url, Location):
        return url
    return _resolve_url(os.fspath(url), storage_options)


def _resolve_url(text: str, storage_options: Mapping[str, Any] | None) -> Location:
    """The one place a URL becomes a filesystem (tests count its calls: each URL of a job is resolved once)."""
    if not text:
        raise AffectError("dataset URL: empty; expected a local path or an fsspec URL (s3://, memory://, ...)")
    if _URL_PASSWORD.match(text):
        # A URL travels into logs, Ray jobs, Prefect parameters and result files: it must never carry a password.
        raise AffectError(
            f"{redact(text)}: a URL with credentials (user:password@) is refused; keys come from the environment "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or storage options, never from the URL"
        )
    protocol = text.split("://", 1)[0] if "://" in text else "file"
    options = dict(storage_options or {})
    if protocol in ("s3", "s3a"):
        options = s3_storage_options(options)
    try:
        if protocol == "file":
            local = text[len("file://") :] if text.startswith("file://") else text
            fs = fsspec.filesystem("file")  # options are for remote stores; a local path ignores them
            path = posixpath.normpath(os.path.abspath(os.path.expanduser(local)).replace(os.sep, "/"))
        elif protocol == "memory":
            fs, path = fsspec.core.url_to_fs(text)
        else:
            fs, path = fsspec.core.url_to_fs(text, **options)
    except (ImportError, ValueError) as exc:
        raise AffectError(
            f"{redact(text)}: unsupported storage URL ({type(exc).__name__}); expected a local "
            "path or a URL whose protocol fsspec knows (s3://, memory://, gs://, ...)"
        ) from None
    return Location(fs, path.rstrip("/") if path not in ("/", "") else path, text.rstrip("/") or text)


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """A pyarrow filesystem over ``fs``: pyarrow's own for local files, an FSSpecHandler wrapper otherwise."""
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether ``path`` exists (a file, or a directory / prefix with something in it)."""
    try:
        return bool(fs.exists(path))
    except FileNotFoundError:
        return False


def is_dir(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    try:
        return bool(fs.isdir(path))
    except FileNotFoundError:
        return False


def list_dir(fs: fsspec.AbstractFileSystem, path: str, *, refresh: bool = True) -> list[tuple[str, str]]:
    """Entries directly below ``path`` as sorted ``(name, "file" | "directory")`` pairs; empty if it does not
    exist.

    ``refresh`` bypasses listing caches (s3fs caches listings), so a version written a moment ago is seen."""
    try:
        if refresh:
            fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    base = path.rstrip("/")
    for entry in entries:
        name = str(entry["name"]).rstrip("/")
        if name == base:
            continue
        out.append((posixpath.basename(name), "directory" if entry.get("type") == "directory" else "file"))
    return sorted(set(out))


# Packages whose exceptions mean "the store or its client failed" (connection refused, timeout, S3 protocol error).
_STORE_CLIENT_PACKAGES = frozenset({"botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "s3fs", "pyarrow"})


def is_store_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an I/O or storage-client failure (an OSError, or raised by botocore, aiohttp, pyarrow...)
    rather than a bug: such failures are reported as one line, and retried where a task allows it."""
    if isinstance(exc, OSError):
        return True
    return any(kind.__module__.split(".")[0] in _STORE_CLIENT_PACKAGES for kind in type(exc).__mro__[:-2])


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    with fs.open(path, "rb") as handle:
        return handle.read()


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a small file so that readers see either nothing or the whole content.

    Local files: write a temporary sibling, flush to disk, then rename over the target (atomic on POSIX).
    Object stores (S3) and memory:// publish an object in one PUT, which is atomic by itself."""
    parent = posixpath.dirname(path)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)


def remove_tree(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Best-effort recursive delete (used to clean up after a failed write); errors are swallowed."""
    try:
        if exists(fs, path):
            fs.rm(path, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must never mask the original error
        pass
