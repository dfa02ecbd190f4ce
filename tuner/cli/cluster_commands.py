"""`tuner cluster ...`: what a Ray cluster offers for tuning, and what a node should advertise."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

cluster_app = typer.Typer(no_args_is_help=True, help="Inspect the Ray cluster used by `tuner run --ray-address`.")
out = Console()


@cluster_app.command()
def resources(
    target: Annotated[str, typer.Option(help='"cpu" (this host) or a TVM target as a JSON dict.')] = "cpu",
) -> None:
    """Print the Ray resources this node advertises: `ray start --resources "$(tuner cluster resources)"`."""
    from ..cluster.nodes import node_resources
    from ..targets import parse_target

    print(json.dumps(node_resources(parse_target(target))))


@cluster_app.command()
def status(
    ray_address: Annotated[str, typer.Option(help='Cluster address ("auto" = the one started on this machine).')] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Nodes, their hardware keys, CPUs and GPUs, and how many are in use."""
    from ..cluster.nodes import cluster_status

    report = cluster_status(ray_address)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"Ray cluster at {ray_address}")
    for col in ("node", "address", "alive", "CPUs", "GPUs", "hardware keys"):
        table.add_column(col, no_wrap=col in ("node", "hardware keys"))
    for n in report["nodes"]:
        table.add_row(n["node_id"][:12], n["address"], "yes" if n["alive"] else "no", f"{n['cpus']:g}",
                      f"{n['gpus']:g}", ", ".join(n["hardware_keys"]) or "-")
    out.print(table)
    used = report["in_use"]
    out.print(f"in use: {used['CPU']:g} of {report['total']['CPU']:g} CPUs (builders and runners of running jobs)")
