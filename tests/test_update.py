"""One record describes an update: its checks, and its spellings on the wire, in the silo's
state.json (including files written before the record existed) and in the audit line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from photon.errors import UpdateRejected
from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from silo_agent.state import SiloState
from silo_agent.transfers import PendingUpdate

DIGEST = "0123456789abcdef" * 4


def _record(**changes: object) -> UpdateRecord:
    fields: dict[str, object] = {
        "round": 3,
        "transfer_id": "silo-0-r3-0123456789abcdef",
        "base_version": 3,
        "digest": DIGEST,
        "size": 1000,
        "num_tokens": 4096,
        "train_loss": 2.5,
        "base_eval_loss": None,
        "train_seconds": 12.0,
        "signature": b"\x30\x44sig",
        "codec": "int8",
    }
    fields.update(changes)
    return UpdateRecord(**fields)  # type: ignore[arg-type]


def test_the_header_round_trips_and_not_measured_is_nan_on_the_wire() -> None:
    record = _record()
    header = record.to_header(offset=250)
    assert header.offset == 250 and math.isnan(header.base_eval_loss)
    wire = pb.UploadHeader.FromString(header.SerializeToString())
    assert UpdateRecord.from_header(wire) == (record, 250)


def test_state_json_round_trips_and_keeps_its_keys() -> None:
    pending = PendingUpdate(update=_record(), path="/silo/pending/r000003.upd")
    saved = json.loads(json.dumps(pending.to_json()))
    assert set(saved) == {
        *("round", "base_version", "transfer_id", "path", "digest", "size", "num_tokens"),
        *("train_loss", "base_eval_loss", "train_seconds", "signature", "codec"),
    }
    assert saved["signature"] == "3044736967"
    assert PendingUpdate.from_json(saved) == pending


def test_a_state_json_written_before_the_record_still_loads(tmp_path: Path) -> None:
    # Exactly what the silo wrote when PendingUpdate was a flat dataclass (asdict, NaN loss).
    old_pending: dict[str, object] = {
        "base_eval_loss": math.nan,
        "base_version": 3,
        "digest": DIGEST,
        "num_tokens": 4096,
        "path": str(tmp_path / "pending" / "r000003.upd"),
        "round": 3,
        "signature": "3044736967",
        "size": 1000,
        "train_loss": 2.5,
        "train_seconds": 12.0,
        "transfer_id": "silo-0-r3-0123456789abcdef",
    }
    old = {"completed_round": 3, "trainer_dir": "trainer/r000003", "pending": old_pending}
    (tmp_path / "state.json").write_text(json.dumps(old, indent=1, sort_keys=True))
    pending = SiloState(tmp_path).pending
    assert pending == PendingUpdate(update=_record(codec=""), path=str(old_pending["path"]))
    assert json.loads(json.dumps(pending.to_json())).keys() == {*old_pending, "codec"}


def test_the_audit_line_fields_are_the_records() -> None:
    fields = {"round": 3, "digest": DIGEST, "signature": b"\x30\x44sig"}
    assert _record().audit_fields() == {**fields, "codec": "int8"}
    assert _record(codec="").audit_fields() == fields  # an older silo did not say


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transfer_id": "../etc"}, "transfer_id '../etc' must match"),
        ({"digest": "ABC"}, "digest must be 64 lowercase hex characters"),
        ({"size": 0}, "size 0 must be positive"),
        ({"num_tokens": 0}, "num_tokens must be in (0, 2**62)"),
        ({"num_tokens": 2**62}, "num_tokens must be in (0, 2**62)"),
        ({"train_loss": math.inf}, "train_loss must be finite"),
        ({"base_eval_loss": -math.inf}, "base_eval_loss must be finite"),
        ({"codec": "int3"}, "codec 'int3' is not one of fp32, bf16, int8, int4"),
    ],
)
def test_a_record_is_checked_when_it_is_built(changes: dict[str, object], message: str) -> None:
    with pytest.raises(UpdateRejected, match=re.escape(message)):
        _record(**changes)


def test_a_header_whose_offset_lies_outside_the_object_is_refused() -> None:
    with pytest.raises(UpdateRejected, match="offset 1001 / size 1000 are inconsistent"):
        UpdateRecord.from_header(_record().to_header(offset=1001))


def test_nan_losses_mean_not_measured() -> None:
    assert _record(train_loss=math.nan).train_loss is None
