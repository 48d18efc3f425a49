"""The torch.distributed process group of a data-parallel Ray Train run (``affect train --workers N``).

Ray Train starts the N workers; this module joins them into one process group, gloo on CPUs and NCCL on GPUs:

- every worker on one node (the embedded Ray, a single machine): a file store in the node's temporary folder, and gloo
  pinned to the loopback interface, so nothing listens beyond 127.0.0.1 (a TCP store would listen on every interface);
- workers on several nodes: a TCP store on the rank-0 worker's node at a free port, its address handed to the other
  workers through Ray Train's broadcast.

The store's name and address come from rank 0 through ``ray.train.collective.broadcast_from_rank_zero``, so a
restarted group never meets a previous attempt's store.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid


def loopback_interface() -> str:
    """The name of the network interface holding 127.0.0.1 ("lo" on Linux)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return "lo"


def join_process_group(*, use_gpu: bool) -> None:
    """Join this Ray Train worker to the run's process group (call once in the training function)."""
    import ray
    import ray.train
    import torch.distributed as dist
    from ray.train.collective import broadcast_from_rank_zero

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    backend = "nccl" if use_gpu else "gloo"
    if context.get_local_world_size() == world:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback_interface())
        token = broadcast_from_rank_zero(uuid.uuid4().hex if rank == 0 else None)
        path = os.path.join(tempfile.gettempdir(), f"affect-process-group-{token}")
        dist.init_process_group(backend, init_method=f"file://{path}", rank=rank, world_size=world)
        return
    address = None
    if rank == 0:
        host = ray.util.get_node_ip_address()
        with socket.socket() as probe:
            probe.bind((host, 0))
            address = f"{host}:{probe.getsockname()[1]}"
    address = broadcast_from_rank_zero(address)
    dist.init_process_group(backend, init_method=f"tcp://{address}", rank=rank, world_size=world)


def leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
