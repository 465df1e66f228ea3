"""Numbers as people read them in tables and reports."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """`9712345` -> `9.7MB` (decimal units; bytes below 1000 as a whole number)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}GB"
