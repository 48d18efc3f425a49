"""A Prefect server (``prefect server start``) on 127.0.0.1 with its own ``PREFECT_HOME`` and SQLite database,
for schedules in the tests and the local stack."""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

from affect_services.process import LOOPBACK, Launch, Service, free_port, service_env, venv_script


class PrefectServer(Service):
    """``prefect server start`` on 127.0.0.1 with its own ``PREFECT_HOME`` (SQLite database inside it)."""

    name = "Prefect server"

    def __init__(
        self,
        home_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        ui: bool = False,
        startup_timeout: float = 120.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.home_dir = Path(home_dir).absolute()
        self.port = port
        self.ui = ui

    def __repr__(self) -> str:
        return f"PrefectServer(home_dir={str(self.home_dir)!r}, api_url={self.api_url!r})"

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:<port>/api``, the value for ``PREFECT_API_URL``."""
        return f"http://{LOOPBACK}:{self.port}/api" if self.port else ""

    def env(self) -> dict[str, str]:
        """Environment for clients and workers of this server."""
        return {"PREFECT_API_URL": self.api_url}

    def healthy(self) -> bool:
        """Whether ``GET /api/health`` answers ``true``."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200 and json.loads(response.read()) is True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def _launch(self) -> None:
        if self.port is None:
            self.port = free_port()
        self.home_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home_dir, stat.S_IRWXU)
        env = service_env(drop=[name for name in os.environ if name.startswith("PREFECT_")])
        env.update(
            {
                "PREFECT_HOME": str(self.home_dir),
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home_dir / 'prefect.db'}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "true" if self.ui else "false",
            }
        )
        argv = [venv_script("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(self.port)]
        argv += ["--ui" if self.ui else "--no-ui", "--analytics-off"]
        launch = Launch("prefect server", argv, env, self.home_dir / "server.log")
        self._launches = [launch]
        launch.launch()

    def _wait_ready(self, deadline: float) -> None:
        launch = self._launches[0]
        while not self.healthy():
            self._check_alive(launch)
            if time.monotonic() > deadline:
                raise self._timeout(launch, f"API {self.api_url}")
            time.sleep(0.3)
