"""Progress of long work: a bar on a terminal, periodic structured log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from photon.logs import get_logger

log = get_logger("silo_agent.progress")


class Progress:
    """Counts `total` units of `what`; `update(n, **fields)` after each piece of work."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        *,
        interactive: bool | None = None,
        log_every_s: float = 10.0,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done, self.fields = 0, dict[str, Any]()
        self.started = self._last_log = time.monotonic()
        self.log_every_s = log_every_s
        tty = sys.stderr.isatty() if interactive is None else interactive
        self._bar = None
        if tty:
            from tqdm import tqdm

            scale = unit == "B"
            self._bar = tqdm(
                total=total,
                desc=what,
                unit=unit,
                unit_scale=scale,
                unit_divisor=1024 if scale else 1000,
                leave=False,
                file=sys.stderr,
            )

    def update(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.update(n)
            if fields:
                self._bar.set_postfix({k: _fmt(v) for k, v in fields.items()}, refresh=False)
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            self._log()

    def _log(self) -> None:
        elapsed = time.monotonic() - self.started
        log.info(
            f"{self.what}_progress",
            done=self.done,
            total=self.total,
            unit=self.unit,
            rate=round(self.done / elapsed, 1) if elapsed else None,
            **{k: _fmt(v) for k, v in self.fields.items()},
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _fmt(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v
