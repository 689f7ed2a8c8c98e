"""tomoqc."""
