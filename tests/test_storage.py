"""affect_core.storage: URLs to filesystems, S3 endpoint resolution, atomic small writes, redaction."""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs
import pytest

from affect_core import storage
from affect_core.errors import AffectError


def test_local_path_and_file_url_resolve_to_the_same_place(tmp_path):
    plain = storage.resolve(str(tmp_path / "ds"))
    url = storage.resolve(f"file://{tmp_path}/ds")
    assert plain.path == url.path == str(tmp_path / "ds")
    assert plain.is_local and plain.protocol in ("file", "local")
    assert isinstance(plain.arrow_filesystem(), pafs.LocalFileSystem)


def test_memory_url_round_trip_and_listing():
    loc = storage.resolve(f"memory://affect-test-{uuid.uuid4().hex}/root")
    assert loc.protocol == "memory"
    storage.write_bytes_atomic(loc.fs, storage.join(loc.path, "a", "x.json"), b"{}")
    storage.write_bytes_atomic(loc.fs, storage.join(loc.path, "b.txt"), b"hello")
    assert storage.list_dir(loc.fs, loc.path) == [("a", "directory"), ("b.txt", "file")]
    assert storage.read_bytes(loc.fs, storage.join(loc.path, "b.txt")) == b"hello"
    assert loc.exists("a/x.json") and not loc.exists("missing")
    assert storage.list_dir(loc.fs, storage.join(loc.path, "missing")) == []
    assert isinstance(loc.arrow_filesystem(), pafs.PyFileSystem)


def test_atomic_local_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    fs = storage.resolve(str(tmp_path)).fs
    target = str(tmp_path / "sub" / "manifest.json")
    storage.write_bytes_atomic(fs, target, b"first")
    storage.write_bytes_atomic(fs, target, b"second")
    assert open(target, "rb").read() == b"second"
    assert os.listdir(tmp_path / "sub") == ["manifest.json"]


def test_join_never_doubles_or_drops_separators():
    assert storage.join("s3://bucket/prefix/", "/_manifests", "v1.json") == "s3://bucket/prefix/_manifests/v1.json"
    assert storage.join("/data", "a/b", "") == "/data/a/b"
    assert storage.join("/", "x") == "/x"


def test_s3_endpoint_comes_from_options_then_affect_env_then_aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1111")
    monkeypatch.delenv("AFFECT_S3_ENDPOINT", raising=False)
    assert storage.s3_storage_options()["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:1111"
    monkeypatch.setenv("AFFECT_S3_ENDPOINT", "http://127.0.0.1:2222")
    assert storage.s3_storage_options()["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:2222"
    explicit = storage.s3_storage_options({"endpoint_url": "http://127.0.0.1:3333", "anon": False})
    assert explicit == {"anon": False, "client_kwargs": {"endpoint_url": "http://127.0.0.1:3333"}}
    nested = storage.s3_storage_options({"client_kwargs": {"endpoint_url": "http://127.0.0.1:4444"}})
    assert nested["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:4444"


def test_redact_removes_credentials_from_urls():
    assert storage.redact("s3://AKIAXXXX:supersecret@bucket/x") == "s3://bucket/x"
    assert storage.redact("https://h/p?X-Amz-Signature=abc&token=t&part=2") == "https://h/p?part=2"
    assert "secret" not in storage.redact("https://h/p?secret_key=zzz")


@pytest.mark.parametrize(
    "url", ["s3://AKIAPLANTED:pl4nted-pw@bucket/ds", "https://user:pl4nted-pw@host/ds.parquet", "s3://:pl4nted-pw@b/x"]
)
def test_a_url_with_a_password_is_refused_without_echoing_it(url):
    with pytest.raises(AffectError, match="credentials") as refused:
        storage.resolve(url)
    assert "pl4nted-pw" not in str(refused.value) and "from the environment" in str(refused.value)


@pytest.mark.parametrize("url", ["memory://bucket@3", "memory://b/name@with-at"])
def test_an_at_sign_without_a_password_is_no_credential(url):
    assert storage.resolve(url).url == url


def test_unknown_protocol_is_an_affect_error():
    with pytest.raises(AffectError, match="unsupported storage URL"):
        storage.resolve("nosuchproto://bucket/x")
    with pytest.raises(AffectError, match="empty"):
        storage.resolve("")


def test_delta_lake_gets_the_s3_endpoint_and_keys_explicitly(monkeypatch):
    """delta-rs reads neither AFFECT_S3_ENDPOINT nor AWS_ENDPOINT_URL_S3: the endpoint fsspec uses is passed on."""
    from affect_core.data import delta

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AFFECT_S3_ENDPOINT", "http://127.0.0.1:8333")
    loc = storage.resolve(
        "s3://bucket/ds", {"key": "AKID", "secret": "s3cr3t", "client_kwargs": {"region_name": "eu-x"}}
    )
    options = delta.delta_storage_options(loc)
    assert options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8333" and options["AWS_ALLOW_HTTP"] == "true"
    assert (options["AWS_ACCESS_KEY_ID"], options["AWS_SECRET_ACCESS_KEY"], options["AWS_REGION"]) == (
        "AKID",
        "s3cr3t",
        "eu-x",
    )
    assert delta.table_uri(loc) == "s3://bucket/ds"
    assert delta.delta_storage_options(storage.resolve("/tmp/x")) == {}
    with pytest.raises(AffectError, match="memory:// is not one"):
        delta.table_uri(storage.resolve("memory://x/y"))


def test_versioned_urls_parse_only_a_numeric_suffix():
    from affect_core.data import delta

    assert delta.parse_versioned_url("s3://b/ds@12") == ("s3://b/ds", 12)
    assert delta.parse_versioned_url("/data/ds") == ("/data/ds", None)
    assert delta.parse_versioned_url("s3://key:secret@bucket/ds") == ("s3://key:secret@bucket/ds", None)
    assert delta.parse_versioned_url("/data/name@host/ds") == ("/data/name@host/ds", None)


def test_a_ray_connection_failure_is_not_reported_as_a_storage_failure(capsys):
    """Ray's "Failed to connect to Ray cluster" is a ConnectionError, hence an OSError like a store's: the CLI names
    Ray and what to check instead of 'storage failed'."""
    import typer

    from affect_cli.main import one_line_errors

    def joins_nothing() -> None:
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1")

    def store_down() -> None:
        raise ConnectionError("Connection refused: s3 endpoint")

    with pytest.raises(typer.Exit):
        one_line_errors(joins_nothing)()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: Ray: Failed to connect") and "RAY_ADDRESS" in line and "RAY_AUTH_MODE=token" in line
    with pytest.raises(typer.Exit):
        one_line_errors(store_down)()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: storage failed"), line
