"""The fault-free reference run every deterministic faulted run is compared against."""

from __future__ import annotations

import pytest

from tests.faults._support import fault_free_run


@pytest.fixture(scope="session")
def reference_digest(tmp_path_factory: pytest.TempPathFactory) -> str:
    """param_digest of the final model of a fault-free run (once per test session)."""
    summary = fault_free_run(tmp_path_factory.mktemp("reference"))
    return str(summary["param_digest"])
