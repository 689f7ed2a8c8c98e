"""CLI commands (score)."""

from tomoqc.cli import app  # noqa: F401
