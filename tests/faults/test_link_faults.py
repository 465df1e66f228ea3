"""Network faults between the silos and the aggregator, through the link emulator: a connection
reset mid-upload, a partition that heals, a flapping link. The run completes and its final
model is the fault-free run's."""

from __future__ import annotations

import time
from pathlib import Path

from bandwidth.link import LinkProfile
from tests.faults._support import (
    CHUNK_BYTES,
    assert_completed,
    event_times,
    events,
    faults_federation,
    linked_silos,
    run_to_end,
    start_all,
    utc_now,
)
from tests.harness import wait_for

#: Slow enough that an update (about 3 MB) takes over a second to cross, so a fault can be
#: aimed at the middle of an upload from outside.
SLOW = LinkProfile.parse(rate="16mbit")


def test_connection_cut_mid_upload_resumes_and_completes(
    tmp_path: Path, reference_digest: str
) -> None:
    fed = faults_federation(tmp_path)
    with linked_silos(fed, profile=SLOW) as links:
        try:
            start_all(fed)
            # Join, polls and acknowledgements of the download are far below 1.5 MB upstream;
            # the first upload is about 3 MB, so the cut lands in its middle. The slow link
            # paces the bytes, so what it forwarded has reached the aggregator's spool (on an
            # unshaped link a megabyte can sit in socket buffers and the resume starts at 0).
            links["silo-0"].cut_after(1_500_000, direction="up")
            codes = run_to_end(fed)
        finally:
            fed.stop_all()
        assert links["silo-0"].faults_injected >= 1, "the cut fired"
    summary = assert_completed(fed, codes)
    assert summary["param_digest"] == reference_digest
    assert events(fed, "silo-0", "upload_resuming") == 1, "the upload resumed, not restarted"


def test_partition_mid_upload_heals_and_completes(tmp_path: Path, reference_digest: str) -> None:
    fed = faults_federation(tmp_path)
    with linked_silos(fed, profile=SLOW) as links:
        link = links["silo-0"]
        try:
            start_all(fed)
            wait_for(lambda: link.bytes_up > 4 * CHUNK_BYTES, 180, "silo-0's upload to start")
            link.blackhole(True)
            down_at = utc_now()
            time.sleep(4.0)  # the partition itself: nothing crosses for 4 s
            link.blackhole(False)
            up_at = utc_now()
            codes = run_to_end(fed)
        finally:
            fed.stop_all()
    summary = assert_completed(fed, codes)
    assert summary["param_digest"] == reference_digest
    trained = event_times(fed, "silo-0", "local_training_done")[0]
    accepted = event_times(fed, "silo-0", "upload_accepted")[0]
    assert trained < down_at < up_at < accepted, "the partition fell inside the round-0 upload"


def test_flapping_link_completes(tmp_path: Path, reference_digest: str) -> None:
    fed = faults_federation(tmp_path)
    with linked_silos(fed, profile=SLOW) as links:
        try:
            start_all(fed)
            for link in links.values():
                link.flap(3.0, 1.0)  # down for the last second of every 3 s, until closed
            codes = run_to_end(fed)
        finally:
            fed.stop_all()
        flaps = {name: link.faults_injected for name, link in links.items()}
    summary = assert_completed(fed, codes)
    assert summary["param_digest"] == reference_digest
    assert all(n >= 3 for n in flaps.values()), flaps
