"""The report's three figures, drawn with matplotlib's non-interactive Agg canvas.

Figures are built with the object API (`Figure` + `FigureCanvasAgg`), never pyplot, so no
display and no global state are involved and reports can be made from any thread.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from photon.fsutil import atomic_write_with
from photon.report import series
from photon.report.summary import RunSummary

FIGSIZE = (8.0, 4.5)
DPI = 110
UP_COLOR, DOWN_COLOR, DDP_COLOR = "#1f77b4", "#ff7f0e", "#7f7f7f"


def new_figure(title: str, ncols: int) -> tuple[Figure, list[Axes]]:
    """A figure of `ncols` side-by-side panels, attached to an Agg canvas."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=12)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def save_png(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG atomically (tmp + fsync + rename)."""
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _title(s: RunSummary, what: str) -> str:
    return f"{what} — {s.federation}" if s.federation else what


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")


def _integer_x(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def eval_loss_figure(s: RunSummary) -> Figure:
    """Global eval loss per round (left) and per cumulative training tokens (right)."""
    fig, (by_round, by_tokens) = new_figure(_title(s, "Global evaluation loss"), 2)
    _eval_panel(by_round, series.eval_by_round(s), s.initial_eval_loss)
    by_round.set_xlabel("Rounds completed (global model version)")
    _integer_x(by_round)
    _eval_panel(by_tokens, series.eval_by_tokens(s), s.initial_eval_loss)
    by_tokens.set_xlabel("Cumulative training tokens (all silos)")
    by_tokens.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _si(v)))
    return fig


def _eval_panel(ax: Axes, line: series.Series, initial: float | None) -> None:
    ax.set_ylabel("Eval loss (nats/token)")
    ax.grid(True, alpha=0.3)
    if not line.x:
        _no_data(ax, "no evaluation recorded")
        return
    ax.plot(line.x, line.y, marker="o", markersize=4, color=UP_COLOR, label="global model")
    if initial is not None:
        ax.plot([0], [initial], marker="s", markersize=7, color="black", ls="", label="initial")
    ax.legend(loc="upper right", fontsize=8)


def train_loss_figure(s: RunSummary) -> Figure:
    """Each silo's local train loss per round, one line per silo."""
    fig, (ax,) = new_figure(_title(s, "Local training loss per silo"), 1)
    ax.set_xlabel("Round")
    ax.set_ylabel("Train loss (nats/token)")
    ax.grid(True, alpha=0.3)
    _integer_x(ax)
    lines = series.train_loss_by_silo(s)
    if not lines:
        _no_data(ax, "no per-silo train loss recorded")
        return fig
    for name, line in lines.items():
        ax.plot(line.x, line.y, marker="o", markersize=3, label=name)
    ax.legend(
        loc="upper right", fontsize=8, ncols=1 + len(lines) // 8, title="silo", title_fontsize=8
    )
    return fig


def bytes_figure(s: RunSummary) -> Figure:
    """Bytes per round up/down (left) and cumulative bytes vs data-parallel (right, log)."""
    fig, (per_round, total) = new_figure(_title(s, "Communication"), 2)
    _bytes_per_round(per_round, s)
    _cumulative_bytes(total, s)
    return fig


def _bytes_per_round(ax: Axes, s: RunSummary) -> None:
    ax.set_title("Bytes per round", fontsize=10)
    ax.set_xlabel("Round")
    _integer_x(ax)
    largest = max((max(r.bytes_up, r.bytes_down) for r in s.rounds), default=0)
    unit, scale = series.byte_unit(largest)
    ax.set_ylabel(f"Bytes per round ({unit})")
    ax.grid(True, axis="y", alpha=0.3)
    if largest <= 0:
        _no_data(ax, "no traffic recorded")
        return
    x = [r.round for r in s.rounds]
    up = [r.bytes_up / scale for r in s.rounds]
    down = [r.bytes_down / scale for r in s.rounds]
    ax.bar([i - 0.2 for i in x], up, width=0.4, color=UP_COLOR, label="up (silos → aggregator)")
    ax.bar([i + 0.2 for i in x], down, width=0.4, color=DOWN_COLOR, label="down (→ silos)")
    ax.set_ylim(0, max(*up, *down, 1e-9) * 1.3)  # headroom so the legend covers no bar
    ax.legend(loc="upper center", fontsize=8, ncols=2)


def _cumulative_bytes(ax: Axes, s: RunSummary) -> None:
    ax.set_title("Cumulative bytes vs data-parallel", fontsize=10)
    ax.set_xlabel("Rounds completed")
    ax.set_ylabel("Cumulative bytes")
    _integer_x(ax)
    ax.grid(True, which="both", alpha=0.3)
    ours, ddp = series.cumulative_traffic(s), series.cumulative_ddp(s)
    if not any(v > 0 for v in ours.y):
        _no_data(ax, "no traffic recorded")
        return
    _log_bytes_axis(ax)
    ax.plot(ours.x, ours.y, marker="o", markersize=4, color=UP_COLOR, label="federated (up+down)")
    if ddp is not None and any(v > 0 for v in ddp.y):
        ax.plot(
            ddp.x,
            ddp.y,
            marker="^",
            markersize=4,
            ls="--",
            color=DDP_COLOR,
            label="data-parallel equivalent",
        )
    if s.comm_reduction_vs_ddp is not None:
        note = f"{s.comm_reduction_vs_ddp:g}x less than DDP"
        ax.text(0.98, 0.04, note, ha="right", transform=ax.transAxes, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)


def _log_bytes_axis(ax: Axes) -> None:
    """Log-scale y axis labelled at 1, 2, 5 x 10^k bytes (20MB, 50MB, 100MB, ...)."""
    ax.set_yscale("log")
    ax.set_ylabel("Cumulative bytes (log scale)")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _si(v, "B")))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _si(value: float, suffix: str = "") -> str:
    """Tick label with a decimal prefix: 1.5k, 30M, 2G (KB/MB/GB for bytes, as elsewhere)."""
    kilo = "K" if suffix == "B" else "k"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), (kilo, 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:g}{prefix}{suffix}"
    return f"{value:g}{suffix}"
