"""Real local services for development, the integration tests and the local stack: SeaweedFS (S3), a
multi-node Ray cluster with its job server and a Prefect server, all bound to 127.0.0.1, each with its data
under a directory the caller chooses. One module per service; docs/architecture.md ("Services") has the map.

- ``process``: launching in a process group, stopping by pid and creation time, ports, loopback checks,
  owner-only files; :class:`Service`, the lifecycle every service shares.
- ``seaweedfs``: :class:`SeaweedS3`. ``ray_cluster``: :class:`RayCluster`, :func:`prepare_ray_driver`.
  ``prefect_server``: :class:`PrefectServer`. ``stack``: :class:`LocalStack`, state.json and env.sh.
- ``python -m affect_services up|down|status DIR`` (``__main__``): the local stack from a shell.

Importing this package starts nothing and imports neither ray nor prefect.
"""

from affect_services.prefect_server import PrefectServer
from affect_services.process import ServiceError, is_loopback, listening_sockets
from affect_services.ray_cluster import RayCluster, prepare_ray_driver, ray_driver_environment
from affect_services.seaweedfs import SeaweedS3
from affect_services.stack import LocalStack, read_state, recorded_pids_alive, stack_down, stack_up

__all__ = [
    "LocalStack",
    "PrefectServer",
    "RayCluster",
    "SeaweedS3",
    "ServiceError",
    "is_loopback",
    "listening_sockets",
    "prepare_ray_driver",
    "ray_driver_environment",
    "read_state",
    "recorded_pids_alive",
    "stack_down",
    "stack_up",
]
