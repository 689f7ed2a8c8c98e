"""CLI commands (io)."""

from tomoqc.cli import app  # noqa: F401


@app.command(hidden=True)
def _placeholder() -> None:
    """Temporary."""
