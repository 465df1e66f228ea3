"""Error feedback: each tensor's quantization error carried into the next delta it sends.

A lossy codec (bf16, int8, int4) loses a little of every delta; the sender keeps what was lost
(the residual) and adds it to its next delta, so nothing is lost over rounds. The residual is a
value (`state_dict()` / `load_state_dict()`) that the sender commits with its other state.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bandwidth.quantize import DEFAULT_BLOCK_SIZE, quantize_roundtrip


class ErrorFeedback:
    """Carries each tensor's quantization error into the next round's delta.

    comp = ef.compensate(delta)               # delta + residual
    write_object(path, comp, "int8")
    ef.update_from_codec(comp, "int8")        # residual = comp - what the receiver decodes
    """

    def __init__(self) -> None:
        self.residual: dict[str, torch.Tensor] = {}

    def compensate(self, delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, t in delta.items():
            r = self.residual.get(name)
            if r is not None and r.shape != t.shape:
                raise ValueError(
                    f"residual {name!r} has shape {list(r.shape)}, delta {list(t.shape)}"
                )
            out[name] = t.float() + r.to(t.device) if r is not None else t.float().clone()
        return out

    def update(
        self, compensated: Mapping[str, torch.Tensor], decoded: Mapping[str, torch.Tensor]
    ) -> None:
        """residual = compensated - decoded, per tensor."""
        for name, t in compensated.items():
            diff = t.detach().float() - decoded[name].detach().float().to(t.device)
            self.residual[name] = diff.cpu().contiguous()

    def update_from_codec(
        self,
        compensated: Mapping[str, torch.Tensor],
        codec: str,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        """`update` against `quantize_roundtrip`, one tensor at a time."""
        for name, t in compensated.items():
            x = t.detach().float().cpu()
            self.residual[name] = x - quantize_roundtrip(x, codec, block_size)

    def reset(self) -> None:
        self.residual.clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Residuals by tensor name: contiguous fp32, ready for safetensors."""
        return dict(self.residual)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, t in state.items():
            if not torch.is_floating_point(t):
                raise ValueError(f"residual {name!r} has dtype {t.dtype}, expected float32")
        self.residual = {k: v.float().contiguous().clone() for k, v in state.items()}
