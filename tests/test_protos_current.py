"""The committed stubs in photon/v1/ must equal what grpcio-tools generates from proto/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "tools" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in (tmp_path / "photon" / "v1").iterdir())
    assert generated, "protoc produced nothing"
    for rel in generated:
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is not committed; run python tools/gen_protos.py"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} is stale; run python tools/gen_protos.py and commit the result"
        )


def test_service_has_the_contracted_methods() -> None:
    from photon.v1 import federation_pb2

    service = federation_pb2.DESCRIPTOR.services_by_name["Federation"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods["Download"] == (False, True)
    assert methods["Upload"] == (True, False)
    for unary in ("Join", "Heartbeat", "GetTask", "UploadStatus", "Leave"):
        assert methods[unary] == (False, False)
