"""The ``tomoqc`` command line: a thin shell over the Python API.

Each command group lives in its own module and registers itself on :data:`app`.
Heavy libraries (TensorFlow, dask) are imported inside the commands, so that
``tomoqc --help`` and ``tomoqc info`` start fast.
"""

from __future__ import annotations

import sys

import typer

from tomoqc.errors import TomoqcError

app = typer.Typer(
    name="tomoqc",
    help="Objective, no-reference image quality assessment for X-ray tomography volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.command()
def version() -> None:
    """Print the tomoqc version."""
    from tomoqc import __version__

    print(__version__)


# Command modules register their commands on `app` when imported.
from tomoqc.cli import io_cmds  # noqa: E402,F401
from tomoqc.cli import data_cmds  # noqa: E402,F401
from tomoqc.cli import metrics_cmds  # noqa: E402,F401
from tomoqc.cli import train_cmds  # noqa: E402,F401
from tomoqc.cli import score_cmds  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`TomoqcError` becomes one line on stderr and its exit code."""
    try:
        rv = app(args=argv, standalone_mode=False)
        # with standalone_mode=False an interrupt or typer.Exit comes back as a return value
        if isinstance(rv, int):
            return rv
    except TomoqcError as err:
        print(f"tomoqc: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("tomoqc: interrupted", file=sys.stderr)
        return 130
    except SystemExit as err:
        return int(err.code or 0)
    except typer.Exit as err:
        return int(getattr(err, "exit_code", 0) or 0)
    except typer.Abort:
        print("tomoqc: aborted", file=sys.stderr)
        return 1
    except Exception as err:
        # usage errors (unknown option, missing argument, bad value) from the CLI parser
        if hasattr(err, "show") and hasattr(err, "exit_code"):
            if err.__class__.__name__ == "NoArgsIsHelpError":
                err.show()
                return 0
            err.show()
            return 1
        raise
    return 0


def entry() -> None:  # console-script entry point
    sys.exit(main())
