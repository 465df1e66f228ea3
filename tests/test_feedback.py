"""Error feedback: the quantization error carried forward, its state, its checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bandwidth.codec import decode_object, encode_object
from bandwidth.feedback import ErrorFeedback
from tests.test_codec import sample_delta


def test_error_feedback_carries_quantization_error_forward():
    ef = ErrorFeedback()
    deltas = [sample_delta(seed) for seed in range(5)]
    sent = {k: torch.zeros_like(v) for k, v in deltas[0].items()}
    for delta in deltas:
        comp = ef.compensate(delta)
        decoded = decode_object(encode_object(comp, "int4"))
        ef.update_from_codec(comp, "int4")
        for k in sent:
            sent[k] += decoded[k]
    for k in sent:
        total = sum(d[k] for d in deltas)
        # everything not yet delivered is exactly the residual
        torch.testing.assert_close(sent[k] + ef.residual[k], total, rtol=0, atol=1e-6)


def test_update_matches_update_from_codec():
    delta = sample_delta()
    a, b = ErrorFeedback(), ErrorFeedback()
    a.update(delta, decode_object(encode_object(delta, "int8")))
    b.update_from_codec(delta, "int8")
    assert all(torch.equal(a.residual[k], b.residual[k]) for k in delta)


def test_error_feedback_state_round_trips_through_safetensors(tmp_path: Path):
    ef = ErrorFeedback()
    ef.update_from_codec(sample_delta(), "int4")
    save_file(ef.state_dict(), tmp_path / "ef.safetensors")
    again = ErrorFeedback()
    again.load_state_dict(load_file(tmp_path / "ef.safetensors"))
    assert again.residual.keys() == ef.residual.keys()
    assert all(torch.equal(again.residual[k], v) for k, v in ef.residual.items())
    with pytest.raises(ValueError, match="shape"):
        again.compensate({"norm": torch.ones(3)})
