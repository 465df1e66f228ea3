"""Transfer benchmark: how close our WAN path comes to the raw link, and what it costs.

    python bench/transfer.py --json OUT.json [--quick] [--only loopback,cut,codecs,rss,netns]

Quick: 256 MiB objects, 8 training steps, one shared synthetic delta (a few minutes on 2
cores). Full: 1 GiB objects, 20 steps, eight distinct deltas. Every figure is measured in this
run, side by side; MB = 10^6 bytes. The JSON's top-level keys:

upload_vs_raw_tls, download_vs_raw_tls
    Throughput of OUR path ÷ a raw TLS 1.3 socket (Python ssl, the same certificates, 2 MiB
    sends) moving the same incompressible object on loopback. Ours: a real gRPC server with
    `FederationServicer` over mTLS in its own process, around a stand-in `FederationHandler`
    whose `begin_upload` is a real `UploadRegistry` session (CRC per chunk, SHA-256, spool
    `.partial`, fsync every 32 MiB, digest verified at finalize), driven by
    `silo_agent.transfers.upload` and, for downloads, `_download_once` (the streaming part of
    `download`, into a `PartialFile`; the tensor decoding is left out). The raw receiver writes
    to a file with the same fsync cadence. Median of 3 interleaved runs per leg; `detail`
    holds each leg's MB/s, runs and CPU seconds per GB on the server and the client side, and
    `raw_up_discard` (raw receiver that discards: the disk's share).
codecs
    {fp32|bf16|int8|int4: ratio, rel_l2, encode_mb_s, decode_mb_s} on a real delta: the
    `small` preset after one round of local training on Python's stdlib source (see
    bench/transfer/codecs.py). ratio = fp32 bytes ÷ encoded bytes; rel_l2 = ||decoded −
    delta|| / ||delta||; speeds in fp32 MB per second.
aggregator_peak_rss_over_model
    Peak RSS of a real `photon aggregator serve` while 8 silos (real clients, signed fp32
    updates) upload concurrently and the round aggregates, ÷ the fp32 model size (preset
    125m, 326 MiB). `rss_detail` splits idle / upload / aggregate peaks, their anonymous part
    (`anon_peak_mib`; the rest is file-backed, e.g. the checkpoint mapped while publishing) and
    the RSS of the bare runtime (an interpreter that imported the aggregator).
resent_bytes_after_cut, chunk_bytes
    An upload cut half-way by `bandwidth.link.LinkEmulator` and resumed by the real client:
    Σ bytes the server's handler took in over all streams − object size (median of 3).
    `cut_detail` adds the client's re-sends (bytes handed to gRPC twice, in flight at the cut).
netns_wire_over_link_rate
    Upload of 30 MB between two network namespaces over a veth pair shaped by tbf 50mbit:
    bytes leaving the shaped interface per second of upload ÷ 50 Mbit/s (null plus
    `netns_reason` without root or `ip netns`). `netns_detail` adds the goodput ratio.
mode, seconds, loadavg_start/end, errors
    Which plan ran, how long it took, the machine's load (other work on the machine slows
    every leg; the ratios, measured interleaved, suffer least) and any section that failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.transfer import codecs, cut, loopback, netns, rss
from bench.transfer.env import Plan, make_certs
from photon import logs
from photon.fsutil import atomic_write_bytes

SECTIONS = ("loopback", "cut", "codecs", "rss", "netns")
_NULLS = {
    "loopback": ("upload_vs_raw_tls", "download_vs_raw_tls"),
    "cut": ("resent_bytes_after_cut", "chunk_bytes"),
    "codecs": ("codecs",),
    "rss": ("aggregator_peak_rss_over_model",),
    "netns": ("netns_wire_over_link_rate",),
}


def _section(result: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    started = time.monotonic()
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    try:
        result.update(fn())
    except Exception as exc:  # noqa: BLE001 - a failed section is reported, the others run
        result["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
        for key in _NULLS[name]:
            result.setdefault(key, None)
    result["section_seconds"][name] = round(time.monotonic() - started, 1)


def run(plan: Plan, work: Path, only: tuple[str, ...]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "errors": {},
        "section_seconds": {},
    }
    started = time.monotonic()
    certs = make_certs(work)
    if {"loopback", "cut"} & set(only):
        with loopback.servers(work, certs, plan) as srv:
            if "loopback" in only:
                _section(result, "loopback", lambda: loopback.measure(work, certs, plan, srv))
            if "cut" in only:
                _section(result, "cut", lambda: cut.measure(work, certs, plan, srv))
    if "codecs" in only:
        _section(result, "codecs", lambda: codecs.measure(work / "codecs", plan.train_steps))
    if "rss" in only:
        _section(result, "rss", lambda: rss.measure(work, certs, plan))
    if "netns" in only:
        _section(result, "netns", lambda: netns.measure(work, certs, plan))
    result["seconds"] = round(time.monotonic() - started, 1)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _fmt(value: object) -> str:
    return "n/a" if value is None else str(value)


def print_table(r: dict[str, Any]) -> None:
    d, rd = r.get("detail", {}), r.get("rss_detail", {})
    rows = [
        (
            "upload ours / raw TLS",
            r.get("upload_vs_raw_tls"),
            f"{d.get('ours_up', {}).get('mb_s')} vs {d.get('raw_up', {}).get('mb_s')} MB/s",
        ),
        (
            "download ours / raw TLS",
            r.get("download_vs_raw_tls"),
            f"{d.get('ours_down', {}).get('mb_s')} vs {d.get('raw_down', {}).get('mb_s')} MB/s",
        ),
        (
            "aggregator peak RSS / model",
            r.get("aggregator_peak_rss_over_model"),
            f"upload {rd.get('upload_over_model')}x, aggregate {rd.get('aggregate_over_model')}x"
            f" of {rd.get('model_fp32_mib')} MiB",
        ),
        (
            "bytes re-sent after a cut",
            r.get("resent_bytes_after_cut"),
            f"chunk {r.get('chunk_bytes')} B; client re-sent "
            f"{r.get('cut_detail', {}).get('client_resent_median')} B",
        ),
        (
            "netns wire rate / 50 Mbit/s",
            r.get("netns_wire_over_link_rate"),
            r.get("netns_reason")
            or f"goodput {r.get('netns_detail', {}).get('goodput_over_link_rate')}",
        ),
    ]
    print(f"\n{'measure':<30} {'value':>10}  detail")
    for name, value, note in rows:
        print(f"{name:<30} {_fmt(value):>10}  {note}")
    table = r.get("codecs") or {}
    if table:
        print(f"\n{'codec':<6} {'ratio':>7} {'rel_l2':>9} {'enc MB/s':>9} {'dec MB/s':>9}")
        for name, c in table.items():
            print(
                f"{name:<6} {c['ratio']:>7} {c['rel_l2']:>9} {c['encode_mb_s']:>9} "
                f"{c['decode_mb_s']:>9}"
            )
    for name, err in r["errors"].items():
        print(f"\nFAILED {name}: {err}")
    print(f"\n{r['mode']} run, {r['seconds']} s, load {r['loadavg_start']} -> {r['loadavg_end']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--quick", action="store_true", help="256 MiB objects, a few minutes")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of " + ",".join(SECTIONS))
    p.add_argument("--keep", action="store_true", help="keep the work folder (for debugging)")
    a = p.parse_args()
    only = tuple(s.strip() for s in a.only.split(",") if s.strip())
    if unknown := set(only) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    logs.configure("json", "error")
    work = Path(tempfile.mkdtemp(prefix="photon-bench-"))
    try:
        result = run(Plan.make(a.quick), work, only)
    finally:
        if a.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    atomic_write_bytes(a.json, (json.dumps(result, indent=2) + "\n").encode())
    print_table(result)
    return 1 if result["errors"] else 0
