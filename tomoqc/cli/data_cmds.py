"""CLI commands (data)."""

from tomoqc.cli import app  # noqa: F401
