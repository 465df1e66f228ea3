"""`photon train --centralized`: the baseline a federation is measured against."""

from __future__ import annotations

from pathlib import Path

import click

from photon.cli.common import photon_errors_as_click

_DIR = click.Path(path_type=Path, file_okay=False)


@click.command()
@click.option(
    "--centralized",
    is_flag=True,
    help="Train one model on the union of the data folders (the only mode so far; required).",
)
@click.option(
    "--data",
    "data_dirs",
    type=_DIR,
    multiple=True,
    required=True,
    help="A prepared data folder (`photon data prepare`); repeat for each silo's folder.",
)
@click.option("--out", "out_dir", type=_DIR, required=True, help="Where summary.json goes.")
@click.option(
    "--eval",
    "eval_dir",
    type=_DIR,
    default=None,
    help="Prepared folder whose held-out split is the eval set (default: the --data folders').",
)
@click.option("--preset", default="tiny", show_default=True, help="Model preset.")
@click.option("--steps", default=250, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=3e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--warmup-steps", default=20, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--eval-every",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Steps between evaluations (a federation's H for one per round).",
)
@click.option("--eval-batches", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@photon_errors_as_click
def train(
    centralized: bool,
    data_dirs: tuple[Path, ...],
    out_dir: Path,
    eval_dir: Path | None,
    preset: str,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    warmup_steps: int,
    eval_every: int,
    eval_batches: int,
    seed: int,
) -> None:
    """Train one model without a federation, on the union of every --data folder (each
    batch draws its rows from the folders in turn), with the silos' inner loop; print
    progress and write summary.json (shaped like the aggregator's) and model.safetensors.

    \b
    The data-parallel equivalent of a federation of N silos, batch b, R rounds, H steps:
      photon train --centralized --data data/silo-0 --data data/silo-1 --out runs/central \\
        --batch-size 2b --steps R*H --eval-every H
    """
    if not centralized:
        raise click.UsageError("say --centralized (the only training mode so far)")
    from photon.centralized import CentralizedConfig, train_centralized
    from photon.federation import TrainingSpec

    cfg = CentralizedConfig(
        preset=preset,
        steps=steps,
        training=TrainingSpec(
            lr=lr, warmup_steps=warmup_steps, batch_size=batch_size, seq_len=seq_len
        ),
        seed=seed,
        eval_every=eval_every,
        eval_batches=eval_batches,
    )
    train_centralized(list(data_dirs), out_dir, cfg, eval_dir=eval_dir, echo=click.echo)
