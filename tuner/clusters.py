"""Ray clusters as the CLI sees them: the resources a node advertises and the cluster's state."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .errors import TunerError
from .hardware import fingerprint_for


def node_resources(target: dict[str, Any]) -> dict[str, float]:
    """The custom resource of this node's hardware key, computed here, on the node itself."""
    from tuner.cluster.ray_backend import hardware_resource

    return {hardware_resource(fingerprint_for(target).key): 1}


def cluster_status(address: str) -> dict[str, Any]:
    import ray

    from tuner.cluster import ray_backend as rb

    try:
        connected = rb.connect(address, {})
    except rb.ClusterError as exc:
        raise TunerError(str(exc)) from None
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        keys = ("CPU", "GPU")
        return {
            "address": address,
            "nodes": [asdict(n) for n in rb.nodes()],
            "total": {k: float(total.get(k, 0)) for k in keys},
            "in_use": {k: float(total.get(k, 0)) - float(free.get(k, 0)) for k in keys},
        }
    finally:
        if connected:
            rb.disconnect()
