"""The silo's durable state: what it holds, where its training stands, what it still owes.

    state.json                  the commit record (written atomically, last)
    global/v<N>.safetensors     the newest global version this silo holds
    trainer/r<R>/               inner optimizer, data cursor, RNG and error feedback after round R
    pending/r<R>.upd            the encoded update of round R until the aggregator accepts it
    downloads/                  partial downloads

A round's local work is committed by one atomic write of `state.json` naming the new trainer
folder and the pending update, so a silo killed at any moment restarts either before the round
(and redoes it from identical state, producing the identical delta) or after it (and resumes
the upload).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from photon.errors import DataError
from photon.fsutil import atomic_write_bytes, atomic_write_with
from silo_agent.transfers import PendingUpdate


class SiloState:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("global", "trainer", "pending", "downloads"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._record = self._read_record()

    def _read_record(self) -> dict[str, Any]:
        path = self.root / "state.json"
        if not path.exists():
            return {"completed_round": -1, "trainer_dir": None, "pending": None}
        try:
            return dict(json.loads(path.read_bytes()))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} is corrupt ({exc}); move the state folder aside to start this silo afresh"
            ) from exc

    def _write_record(self) -> None:
        atomic_write_bytes(
            self.root / "state.json", json.dumps(self._record, indent=1, sort_keys=True).encode()
        )

    # -- the global model -------------------------------------------------------------------
    def held_version(self) -> int:
        versions = sorted(self.root.glob("global/v*.safetensors"))
        return int(versions[-1].stem[1:]) if versions else -1

    def load_global(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        version = self.held_version()
        if version < 0:
            return None
        return version, load_file(str(self._global_path(version)))

    def save_global(self, version: int, params: Mapping[str, torch.Tensor]) -> None:
        path = self._global_path(version)
        atomic_write_with(path, lambda tmp: save_file(dict(params), str(tmp)))
        for old in self.root.glob("global/v*.safetensors"):
            if old != path:
                old.unlink(missing_ok=True)

    def forget_globals_after(self, version: int) -> list[int]:
        """Delete held global versions above `version` (the aggregator went back to an older
        checkpoint, so those numbers will name other parameters); return them."""
        dropped = []
        for path in self.root.glob("global/v*.safetensors"):
            if int(path.stem[1:]) > version:
                path.unlink(missing_ok=True)
                dropped.append(int(path.stem[1:]))
        return sorted(dropped)

    def _global_path(self, version: int) -> Path:
        return self.root / "global" / f"v{version:06d}.safetensors"

    # -- rounds -----------------------------------------------------------------------------
    @property
    def trainer_dir(self) -> Path | None:
        name = self._record.get("trainer_dir")
        return self.root / name if name else None

    @property
    def pending(self) -> PendingUpdate | None:
        p = self._record.get("pending")
        return PendingUpdate.from_json(p) if p else None

    def new_trainer_dir(self, round_: int) -> Path:
        path = self.root / "trainer" / f"r{round_:06d}"
        shutil.rmtree(path, ignore_errors=True)  # debris of an uncommitted attempt
        path.mkdir(parents=True)
        return path

    def pending_path(self, round_: int) -> Path:
        return self.root / "pending" / f"r{round_:06d}.upd"

    def commit_round(self, round_: int, trainer_dir: Path, pending: PendingUpdate) -> None:
        """Make a finished round's local work durable in one atomic step."""
        self._record = {
            "completed_round": round_,
            "trainer_dir": str(trainer_dir.relative_to(self.root)),
            "pending": pending.to_json(),
        }
        self._write_record()
        self._clean(keep_trainer=trainer_dir, keep_pending=Path(pending.path))

    def clear_pending(self) -> None:
        pending = self.pending
        self._record["pending"] = None
        self._write_record()
        if pending is not None:
            Path(pending.path).unlink(missing_ok=True)

    def _clean(self, keep_trainer: Path, keep_pending: Path) -> None:
        for d in self.root.glob("trainer/r*"):
            if d != keep_trainer:
                shutil.rmtree(d, ignore_errors=True)
        for f in self.root.glob("pending/*"):
            if f != keep_pending:
                f.unlink(missing_ok=True)
