"""CLI commands (train)."""

from tomoqc.cli import app  # noqa: F401
