"""CLI commands (io)."""

from tomoqc.cli import app  # noqa: F401
