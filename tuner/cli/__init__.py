"""The `tuner` command line: one module per command group. Errors are one line on stderr and a
non-zero exit, never a traceback."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer
from rich.console import Console

from ..errors import Interrupted, TunerError
from .cluster_commands import cluster_app
from .db_commands import db_app
from .run_command import models, run
from .serve_commands import keys_app, serve, submit

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Tune ONNX models with TVM MetaSchedule.")
err = Console(stderr=True)
app.add_typer(db_app, name="db")
app.add_typer(cluster_app, name="cluster")
app.add_typer(keys_app, name="keys")
app.command()(run)
app.command()(models)
app.command()(serve)
app.command()(submit)


@app.callback()
def options(
    debug: Annotated[bool, typer.Option("--debug", help="On an unexpected error, print its traceback too (also TUNER_DEBUG=1).")] = False,
) -> None:
    """Tune ONNX models with TVM MetaSchedule."""
    if debug:
        os.environ["TUNER_DEBUG"] = "1"


def main() -> None:
    """Entry point: an error becomes one clear line (the step that failed and why) and its exit
    code; `--debug` adds the traceback of an unexpected one."""
    from ..stages import StageError, debug_enabled, summary

    try:
        app()
    except TunerError as exc:
        if isinstance(exc, StageError) and exc.__cause__ is not None and debug_enabled():
            traceback.print_exception(exc.__cause__)
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        if isinstance(exc, Interrupted):
            # CPython remembers a KeyboardInterrupt that once ended an evaluation (even a caught
            # one, e.g. inside TVM's FFI) and then exits by SIGINT whatever sys.exit said. Workers
            # are shut down and every record committed by now, so leave with the promised code.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[bold red]error:[/] interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - outside a pipeline step: still one line, not a traceback
        if debug_enabled():
            traceback.print_exception(exc)
        err.print(f"[bold red]error:[/] {summary(exc)} (run with --debug for the traceback)", highlight=False,
                  soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
