"""`photon report`: plots and a markdown summary of a run, from its `summary.json`.

    files = make_report(Path("runs/local"))         # writes runs/local/report/
    files.markdown                                  # .../report.md, embedding the PNGs

Pieces: `summary` reads the file tolerantly, `series` computes what is plotted, `plots` draws
the figures (matplotlib, Agg canvas), `markdown` writes the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from photon.fsutil import atomic_write_bytes
from photon.logs import get_logger
from photon.report.markdown import render_markdown
from photon.report.summary import RunSummary, find_summary, load_summary

__all__ = ["ReportFiles", "RunSummary", "find_summary", "load_summary", "make_report"]

log = get_logger("photon.report")
REPORT_DIRNAME = "report"


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """The files one report consists of."""

    eval_loss: Path
    train_loss: Path
    bytes: Path
    markdown: Path

    def paths(self) -> tuple[Path, ...]:
        return (self.eval_loss, self.train_loss, self.bytes, self.markdown)

    @classmethod
    def in_dir(cls, out_dir: Path) -> ReportFiles:
        return cls(
            eval_loss=out_dir / "eval_loss.png",
            train_loss=out_dir / "train_loss.png",
            bytes=out_dir / "bytes.png",
            markdown=out_dir / "report.md",
        )


def default_out_dir(run_dir: Path) -> Path:
    """run_dir/report/, or next to the summary when `run_dir` is the summary file itself."""
    run_dir = Path(run_dir)
    return (run_dir.parent if run_dir.is_file() else run_dir) / REPORT_DIRNAME


def make_report(run_dir: Path, out_dir: Path | None = None) -> ReportFiles:
    """Write eval_loss.png, train_loss.png, bytes.png and report.md for the run at `run_dir`
    (a run directory, an aggregator state_dir, or a summary.json) into `out_dir`
    (default: run_dir/report/). Raises DataError when no summary can be found or read."""
    summary = load_summary(Path(run_dir))
    files = ReportFiles.in_dir(Path(out_dir) if out_dir is not None else default_out_dir(run_dir))
    files.markdown.parent.mkdir(parents=True, exist_ok=True)
    _write_plots(summary, files)
    _write_markdown(summary, files)
    log.info("report_written", summary=str(summary.path), out_dir=str(files.markdown.parent))
    return files


def _write_plots(summary: RunSummary, files: ReportFiles) -> None:
    from photon.report import plots  # matplotlib loads only when a report is made

    plots.save_png(plots.eval_loss_figure(summary), files.eval_loss)
    plots.save_png(plots.train_loss_figure(summary), files.train_loss)
    plots.save_png(plots.bytes_figure(summary), files.bytes)


def _write_markdown(summary: RunSummary, files: ReportFiles) -> None:
    out = files.markdown.parent
    images = {
        "Global evaluation loss": files.eval_loss.relative_to(out).as_posix(),
        "Local training loss per silo": files.train_loss.relative_to(out).as_posix(),
        "Communication": files.bytes.relative_to(out).as_posix(),
    }
    atomic_write_bytes(files.markdown, render_markdown(summary, images).encode())
