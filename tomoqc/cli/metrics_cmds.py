"""CLI commands (metrics)."""

from tomoqc.cli import app  # noqa: F401
