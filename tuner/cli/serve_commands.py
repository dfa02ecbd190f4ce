"""`tuner serve`, `tuner submit` and `tuner keys`: the service, its client and its API keys."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .db_commands import DbOption, _settings
from ..errors import TunerError

keys_app = typer.Typer(no_args_is_help=True, help="API keys of `tuner serve`, one or more per team.")
out = Console()
err = Console(stderr=True)

def serve(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="Port (default 8000).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Jobs tuned at once by this process (SQLite: 1; 0 = API only).")] = None,
    db: DbOption = None,
    ray_address: Annotated[Optional[str], typer.Option(help='Ray cluster for the jobs ("auto", "ray://host:10001"); default: a local Ray per job (the config\'s workers.backend); "off": worker processes, no Ray.')] = None,
    storage_dir: Annotated[Optional[Path], typer.Option(help="Uploads and artifacts (env TUNER_STORAGE_DIR; default under the user data dir).")] = None,
) -> None:
    """Run the HTTP service: teams submit jobs, follow them, and download compiled modules."""
    import uvicorn
    from sqlalchemy.engine import make_url

    from ..db.engine import redact_url
    from ..service.app import ServiceConfig, create_app

    settings = _settings()
    serve_cfg = settings.serve
    db_url = db or settings.resolved_db_url()
    n_workers = serve_cfg.workers if workers is None else workers
    if n_workers > 1 and make_url(db_url).get_backend_name() == "sqlite":
        raise TunerError(f"--workers {n_workers} needs PostgreSQL: a SQLite database runs one job worker")
    storage = storage_dir or settings.resolved_storage_dir()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(ServiceConfig(db_url=db_url, storage_dir=storage, settings=settings,
                                   ray_address=ray_address or settings.workers.ray_address or None, workers=n_workers))
    bind_host, bind_port = host or serve_cfg.host, serve_cfg.port if port is None else port
    err.print(f"tuner serve on http://{bind_host}:{bind_port} (docs at /docs); database {redact_url(db_url)}; "
              f"storage {storage}; {n_workers} job worker(s)", highlight=False)
    uvicorn.run(app, host=bind_host, port=bind_port, log_level="info", timeout_graceful_shutdown=5)


def submit(
    model: Annotated[Path, typer.Argument(help="The .onnx file to tune.")],
    server: Annotated[str, typer.Option(envvar="TUNER_SERVER", help="The service's URL.")] = "http://127.0.0.1:8000",
    key: Annotated[str, typer.Option(envvar="TUNER_API_KEY", help="Your team's API key.")] = "",
    target: Annotated[str, typer.Option(help='"cpu", "cuda" or a TVM target JSON dict (resolved on the server).')] = "cpu",
    trials: Annotated[int, typer.Option(min=0, help="Measured trials for the whole model.")] = 200,
    input_shape: Annotated[Optional[list[str]], typer.Option(help="NAME=1,3,224,224 for dynamic inputs; repeatable.")] = None,
    name: Annotated[Optional[str], typer.Option(help="The job's name (default: the file's name).")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(help="Resubmitting with the same key answers the same job.")] = None,
    refine: Annotated[bool, typer.Option("--refine", help="Also tune kernels the database already serves (more budget for a model tuned before).")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job, then download and check the module.")] = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where --wait writes model.so and report.json (default ./tuner-out/<name>).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON on stdout.")] = False,
) -> None:
    """Send MODEL to a `tuner serve`; with --wait, show its progress and download the checked module."""
    from .client import Client

    client = Client(server, key)
    try:
        job = client.submit(model, target, trials, ";".join(input_shape or []), name, idempotency_key, refine)
        if not as_json:
            err.print(f"job {job['id']} {job['status']}: {server.rstrip('/')}/v1/jobs/{job['id']}", highlight=False)
        if wait:
            job = _follow(client, job)
            if job["status"] != "succeeded":
                raise TunerError(f"job {job['id']} {job['status']}: {job.get('error') or 'no reason given'}")
            path = client.download(job, out_dir or Path("tuner-out") / job["name"])
            if not as_json:
                _print_done(job, path)
        if as_json:
            print(json.dumps(job, indent=2))
    finally:
        client.close()


def _follow(client, job: dict) -> dict:  # noqa: ANN001 - tuner.cli.client.Client
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.fields[status]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[best]}"), TimeElapsedColumn(), console=err,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("job", total=job["trials"] or None, status=job["status"], best="")

        def update(current: dict) -> None:
            p = current["progress"]
            best = f"best ≈ {p['best_latency_ms']:.3f} ms" if p["best_latency_ms"] else ""
            bar.update(task, completed=p["trials_done"], total=p["trials_total"] or None,
                       status=current["status"], best=best)
            if not err.is_terminal and current["status"] == "running":
                err.print(f"[job] {p['trials_done']}/{p['trials_total']} trials {best}", highlight=False)

        return client.wait(job["id"], update)


def _print_done(job: dict, path: Path) -> None:
    report = job["report"]
    lat = report["latency_ms"]
    out.print(f"job {job['id']} succeeded: {report['tasks']} tasks ({report['tasks_from_db']} from the database), "
              f"{report['trials']} trials; tuned {lat['tuned']:.3f} ms, ONNX Runtime {lat['onnxruntime']:.3f} ms")
    out.print(f"module: {path} (sha256 {report['artifact']['sha256'][:16]}... checked)")
    out.print(f"report: {path.with_name('report.json')}")


@keys_app.command("create")
def keys_create(team: Annotated[str, typer.Option(help="The team the key acts for.")], db: DbOption = None) -> None:
    """Create a key; it is printed once, alone on the last line, and only its hash is stored."""
    from ..db.keys import create_key
    from .db_tools import migrated_engine

    with migrated_engine(db or _settings().resolved_db_url()) as engine:
        key, info = create_key(engine, team)
    err.print(f"API key {info.prefix}... for team {info.team}; it is shown only now:", highlight=False)
    print(key)


@keys_app.command("list")
def keys_list(team: Annotated[Optional[str], typer.Option(help="Only this team's keys.")] = None, db: DbOption = None,
              as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Keys by prefix, team, creation and revocation time (never the keys themselves)."""
    from ..db.keys import list_keys
    from .db_tools import migrated_engine

    with migrated_engine(db or _settings().resolved_db_url()) as engine:
        keys = list_keys(engine, team)
    rows = [{"prefix": k.prefix, "team": k.team, "created_at": k.created_at.isoformat(),
             "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in keys]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="API keys")
    for col in ("prefix", "team", "created_at", "revoked_at"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row[c] or "-") for c in ("prefix", "team", "created_at", "revoked_at")))
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(prefix: Annotated[str, typer.Argument(help="The key's prefix as `tuner keys list` shows it.")],
                db: DbOption = None) -> None:
    """Revoke a key: the service refuses it from the next request on."""
    from ..db.keys import revoke_key
    from .db_tools import migrated_engine

    with migrated_engine(db or _settings().resolved_db_url()) as engine:
        info = revoke_key(engine, prefix)
    err.print(f"revoked {info.prefix}... of team {info.team}", highlight=False)
