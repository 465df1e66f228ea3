"""`photon plan`: will a preset's training fit on the silo's GPUs?"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from photon.cli.common import photon_errors_as_click
from photon.model import PRESETS
from photon.plan import PRECISIONS, PlanShape, format_table, plan_presets


@click.command()
@click.option(
    "--preset",
    "presets",
    multiple=True,
    type=click.Choice(PRESETS),
    help="Model preset; repeat for several [default: every preset, tiny to 7b].",
)
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(1, 4096))
@click.option("--gpu-mem-gib", default=80.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option(
    "--vocab-size",
    default=258,
    show_default=True,
    type=click.IntRange(1),
    help="The federation tokenizer's vocabulary (258: the built-in byte tokenizer).",
)
@click.option(
    "--batch-size",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="Sequences per micro-batch on each GPU (federation.training.batch_size).",
)
@click.option(
    "--seq-len",
    default=0,
    type=click.IntRange(0),
    help="Tokens per sequence [default: the preset's max_seq_len].",
)
@click.option("--precision", default="bf16-mixed", show_default=True, type=click.Choice(PRECISIONS))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@photon_errors_as_click
def plan(
    presets: tuple[str, ...],
    gpus: int,
    gpu_mem_gib: float,
    vocab_size: int,
    batch_size: int,
    seq_len: int,
    precision: str,
    as_json: bool,
) -> None:
    """Per-GPU memory of training: parameters, gradients, AdamW state, activations and an
    allowance, under DDP and FSDP, with and without activation checkpointing, and whether
    each fits in --gpu-mem-gib. The formulas are in photon/plan.py; docs/institutions.md
    compares them with measured peaks.

    \b
    Examples:
      photon plan                                     # every preset, one 80 GiB GPU
      photon plan --preset 7b --gpus 8 --gpu-mem-gib 80 --vocab-size 32000
      photon plan --preset 1.3b --gpus 4 --gpu-mem-gib 24 --json
    """
    shape = PlanShape(
        preset=(presets or PRESETS)[0],
        vocab_size=vocab_size,
        batch_size=batch_size,
        seq_len=seq_len,
        gpus=gpus,
        gpu_mem_gib=gpu_mem_gib,
        precision="fp32" if precision == "fp32" else "bf16-mixed",
    )
    planned = plan_presets(shape, presets or PRESETS)
    if as_json:
        click.echo(json.dumps({"shape": shape_dict(shape), "presets": planned}, indent=2))
    else:
        click.echo(format_table(shape, planned))


def shape_dict(shape: PlanShape) -> dict[str, object]:
    """The plan's inputs common to every preset."""
    return {k: v for k, v in asdict(shape).items() if k != "preset"}
