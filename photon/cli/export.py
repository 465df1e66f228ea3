"""`photon export` (a Hugging Face folder) and `photon generate` (sample text) from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from photon.cli.common import photon_errors_as_click

_CHECKPOINT = click.Path(path_type=Path, exists=True)


@click.command()
@click.argument("checkpoint", type=_CHECKPOINT)
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@photon_errors_as_click
def export(checkpoint: Path, out_dir: Path) -> None:
    """Write CHECKPOINT as config.json + model.safetensors into OUT_DIR, a folder that
    `transformers.LlamaForCausalLM.from_pretrained(OUT_DIR)` loads. CHECKPOINT is a
    v<version>.safetensors file or a folder holding them (the newest is used).

    \b
    Example:
      photon export runs/local/aggregator-state/checkpoints/v000008.safetensors hf-model
    """
    from photon.export import export_hf

    out = export_hf(checkpoint, out_dir)
    click.echo(f"exported {checkpoint} to {out}")


@click.command()
@click.argument("checkpoint", type=_CHECKPOINT)
@click.option("--prompt", required=True, help="Text the model continues.")
@click.option(
    "--tokens", type=click.IntRange(min=0), default=200, show_default=True, help="New tokens."
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0.0),
    default=0.8,
    show_default=True,
    help="Sampling temperature; 0 is greedy.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option(
    "--tokenizer",
    default="byte",
    show_default=True,
    help="'byte' or the federation's `tokenizers` JSON file.",
)
@photon_errors_as_click
def generate(
    checkpoint: Path, prompt: str, tokens: int, temperature: float, seed: int, tokenizer: str
) -> None:
    """Print the prompt and its continuation sampled from CHECKPOINT (a file or a folder
    holding checkpoints). The same seed gives the same text.

    \b
    Example:
      photon generate runs/local/aggregator-state --prompt "def main(" --tokens 200
    """
    from photon.generate import generate_text

    text = generate_text(
        checkpoint, prompt, tokens=tokens, temperature=temperature, seed=seed, tokenizer=tokenizer
    )
    click.echo(text)
