"""The convergence benchmark's figure: eval loss against tokens, one line per run."""

from __future__ import annotations

from pathlib import Path

from bench.convergence.runs import RunResult
from photon.report.plots import new_figure, save_png

STYLES = {
    "centralized": {"color": "#222222", "linestyle": "-", "marker": "o"},
    "fp32": {"color": "#1f77b4", "linestyle": "-", "marker": "s"},
    "int8": {"color": "#d62728", "linestyle": "--", "marker": "^"},
}


def plot_curves(runs: list[RunResult], path: Path, title: str) -> Path:
    """Write the PNG (Agg canvas, no display) and return its path."""
    fig, (ax,) = new_figure(title, 1)
    for run in runs:
        key = "centralized" if run.mode == "centralized" else str(run.codec)
        style = STYLES.get(key, {"linestyle": ":", "marker": "."})
        label = (
            f"centralized (batch {run.extra.get('batch_size')})"
            if run.outer is None
            else f"federated {run.outer} {run.codec}"
        )
        tokens = [t / 1e6 for t, _ in run.curve]
        losses = [loss for _, loss in run.curve]
        ax.plot(tokens, losses, label=label, markersize=4, **style)  # type: ignore[arg-type]
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("global eval loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_png(fig, path)
