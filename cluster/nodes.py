"""Ray clusters as the CLI sees them: the resources a node advertises and the cluster's state."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tuner.errors import TunerError
from tuner.hardware import fingerprint_for


def hardware_units(target: dict[str, Any]) -> int:
    """How many runners this node can give the target: 1 for a CPU (measurements on one CPU must
    not overlap), the number of local GPUs of the target's model and arch for CUDA."""
    if target.get("kind") != "cuda":
        return 1
    from tuner.gpus import local_gpus

    fp = fingerprint_for(target)
    return sum(1 for g in local_gpus() if g.name == fp.name and g.arch == fp.arch) or 1


def node_resources(target: dict[str, Any]) -> dict[str, float]:
    """The custom resource of this node's hardware key, computed here, on the node itself: one
    unit per runner it can hold (see `hardware_units`)."""
    from tuner.cluster.ray_backend import hardware_resource

    return {hardware_resource(fingerprint_for(target).key): hardware_units(target)}


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
