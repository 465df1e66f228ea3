"""`report.md`: a short summary table of a run with the report's plots embedded."""

from __future__ import annotations

from collections.abc import Mapping

from photon.humanize import human_bytes
from photon.report.summary import RunSummary

NA = "n/a"


def render_markdown(s: RunSummary, images: Mapping[str, str]) -> str:
    """The report as markdown; `images` maps a caption to a path relative to report.md."""
    rows = _rows(s)
    lines = [f"# Run report: {_cell(s.federation or 'unnamed federation')}", ""]
    lines += ["| | |", "| --- | --- |"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows]
    lines += ["", "## Plots", ""]
    for caption, rel in images.items():
        lines += [f"### {caption}", "", f"[![{caption}]({rel})]({rel})", ""]
    return "\n".join(lines)


def _rows(s: RunSummary) -> list[tuple[str, str]]:
    return [
        ("Federation", s.federation or NA),
        ("Model", _model(s.preset, s.model_params)),
        ("Codec", s.codec or NA),
        ("Rounds", _rounds(s)),
        ("Eval loss (initial → final)", _loss_change(s.initial_eval_loss, s.final_eval_loss)),
        ("Bytes up / down", f"{_bytes(s.bytes_up_total)} / {_bytes(s.bytes_down_total)}"),
        ("Data-parallel equivalent", _bytes(s.ddp_equivalent_bytes_total)),
        ("Communication reduction vs DDP", _reduction(s.comm_reduction_vs_ddp)),
        ("Wall time (sum of rounds)", _duration(s.wall_seconds)),
        ("Checkpoint", f"`{s.checkpoint}`" if s.checkpoint else NA),
        ("Summary", f"`{s.path}`"),
    ]


def _model(preset: str | None, params: int | None) -> str:
    parts = ([f"preset `{preset}`"] if preset else []) + (
        [f"{_count(params)} parameters"] if params is not None else []
    )
    return ", ".join(parts) or NA


def _rounds(s: RunSummary) -> str:
    done = s.version if s.version is not None else len(s.rounds)
    planned = NA if s.rounds_planned is None else str(s.rounds_planned)
    state = {True: " (finished)", False: " (in progress)", None: ""}[s.done]
    steps = f", {s.local_steps} local steps each" if s.local_steps is not None else ""
    return f"{done} of {planned}{state}{steps}"


def _loss_change(initial: float | None, final: float | None) -> str:
    if initial is None or final is None:
        return f"{_loss(initial)} → {_loss(final)}"
    ratio = f"final/initial = {final / initial:.3f}" if initial else "ratio n/a"
    return f"{initial:.4f} → {final:.4f} ({ratio})"


def _loss(value: float | None) -> str:
    return NA if value is None else f"{value:.4f}"


def _bytes(value: int | None) -> str:
    return NA if value is None else human_bytes(value)


def _reduction(value: float | None) -> str:
    return NA if value is None else f"{value:g}x less traffic"


def _count(value: int | None) -> str:
    if value is None:
        return NA
    for prefix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{prefix}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NA
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _cell(text: str) -> str:
    """Escape a value for a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
