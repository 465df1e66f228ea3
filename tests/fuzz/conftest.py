"""One live aggregator for every gRPC fuzzer in the package (started once: it is the slow part)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz._live import Live, live_aggregator


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_aggregator(tmp_path_factory.mktemp("fuzz-federation")) as running:
        yield running
