"""The ``tomoqc`` command line: a thin shell over the Python API.

Each command group lives in its own module and registers itself on :data:`app`.
Heavy libraries (TensorFlow, dask) are imported inside the commands, so that
``tomoqc --help`` and ``tomoqc info`` start fast.
"""

from __future__ import annotations

import sys
import warnings

import typer

from tomoqc.errors import TomoqcError, TomoqcWarning

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
from tomoqc.cli import segment_cmds  # noqa: E402,F401
from tomoqc.cli import compare_cmds  # noqa: E402,F401
from tomoqc.cli import study_cmds  # noqa: E402,F401


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """tomoqc's own warnings as one line; every other warning as Python shows it."""
    if issubclass(category, TomoqcWarning):
        print(f"tomoqc: warning: {message}", file=sys.stderr, flush=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`TomoqcError` becomes one line on stderr and its exit code.

    TensorFlow's native start-up noise is kept off stderr (a command's ``--verbose``
    shows it, see :func:`tomoqc.logs.quiet_native_logs`), and tomoqc's warnings are
    printed as one line each, ``tomoqc: warning: ...``.
    """
    from tomoqc.cli.cluster_opts import expand_optional_values
    from tomoqc.logs import quiet_native_logs

    quiet_native_logs()
    argv = expand_optional_values(sys.argv[1:] if argv is None else list(argv))
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(argv)


def _run(argv: list[str]) -> int:
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
