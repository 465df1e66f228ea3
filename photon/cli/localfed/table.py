"""The per-round table `photon local` prints as rounds complete."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from photon.humanize import human_bytes


class RoundTable:
    """Prints a header once, then one line per completed round (each printed once)."""

    def __init__(self, echo: Callable[[str], None], silos: Sequence[str]) -> None:
        self.echo = echo
        self.silos = list(silos)
        self.printed: set[int] = set()
        self.header_done = False

    def update(self, summary: dict[str, Any]) -> None:
        if not self.header_done and summary.get("initial_eval_loss") is not None:
            self._header(summary["initial_eval_loss"])
        for row in summary.get("rounds", []):
            if row["round"] not in self.printed and row.get("eval_loss") is not None:
                if not self.header_done:
                    self._header(summary.get("initial_eval_loss"))
                self.printed.add(row["round"])
                self.echo(self._line(row))

    def _header(self, initial: float | None) -> None:
        self.header_done = True
        start = "n/a" if initial is None else f"{initial:.4f}"
        self.echo(f"initial global eval loss: {start}")
        silo_cols = " ".join(f"{s:>9}" for s in self.silos)
        self.echo(
            f"{'round':>5} {'eval loss':>9} | train loss: {silo_cols} | "
            f"{'bytes up':>9} {'bytes down':>10} {'seconds':>8}"
        )

    def _line(self, row: dict[str, Any]) -> str:
        silos = row.get("silos", {})
        losses = " ".join(
            f"{silos[s]['train_loss']:>9.4f}"
            if s in silos and silos[s]["train_loss"] is not None
            else f"{'-':>9}"
            for s in self.silos
        )
        return (
            f"{row['round']:>5} {row['eval_loss']:>9.4f} | {'':11} {losses} | "
            f"{human_bytes(row['bytes_up']):>9} {human_bytes(row['bytes_down']):>10} "
            f"{row['seconds']:>8.1f}"
        )
