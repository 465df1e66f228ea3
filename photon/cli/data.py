"""`photon data`: turn text into token shards, and deal a corpus out to silos."""

from __future__ import annotations

from pathlib import Path

import click

from photon.cli.common import photon_errors_as_click

_DIR = click.Path(path_type=Path, file_okay=False)


@click.group()
def data() -> None:
    """Prepare a silo's text for training, or split one corpus into silos."""


@data.command()
@click.option("--input", "input_dir", type=_DIR, required=True, help="Folder of text to read.")
@click.option("--out", "out_dir", type=_DIR, required=True, help="Folder for the shards.")
@click.option(
    "--tokenizer",
    default="byte",
    show_default=True,
    help="'byte' (built in, no download) or a path to a `tokenizers` JSON file.",
)
@click.option(
    "--heldout",
    type=click.FloatRange(0.0, 1.0),
    default=0.05,
    show_default=True,
    help="Fraction of documents kept out of training for evaluation.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the held-out pick.")
@click.option(
    "--max-bytes", type=click.IntRange(min=1), default=None, help="Stop after this much text."
)
@photon_errors_as_click
def prepare(
    input_dir: Path,
    out_dir: Path,
    tokenizer: str,
    heldout: float,
    seed: int,
    max_bytes: int | None,
) -> None:
    """Tokenize every .txt/.py/.md/.rst/.jsonl file (optionally .gz) under --input into
    train.bin, heldout.bin and meta.json. A .jsonl line is a document (its "text" field).

    \b
    Example:
      photon data prepare --input corpus/ --out data/silo-0 --heldout 0.05
    """
    from photon.data import prepare as prepare_shards
    from photon.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    report = prepare_shards(
        input_dir, out_dir, tok, heldout_fraction=heldout, seed=seed, max_bytes=max_bytes
    )
    click.echo(
        f"prepared {report.documents} documents into {report.out_dir}: "
        f"{report.train_tokens} train tokens, {report.heldout_tokens} held-out tokens "
        f"(tokenizer {tok.name})"
    )


@data.command()
@click.option("--input", "input_dir", type=_DIR, required=True, help="The corpus folder.")
@click.option("--out", "out_dir", type=_DIR, required=True, help="Gets silo-0/, silo-1/, ...")
@click.option("--silos", type=click.IntRange(min=1), required=True, help="Number of silos.")
@click.option(
    "--mode",
    type=click.Choice(["iid", "by-source"]),
    default="iid",
    show_default=True,
    help="iid: files shuffled and dealt round-robin; by-source: each top-level entry of "
    "--input goes wholly to one silo.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the iid shuffle.")
@photon_errors_as_click
def split(input_dir: Path, out_dir: Path, silos: int, mode: str, seed: int) -> None:
    """Copy the text files under --input into --out/silo-<i>/ (one silo per file), skipping
    site-packages and __pycache__. Then run `photon data prepare` on each silo's folder.

    \b
    Example:
      photon data split --input corpus/ --out split/ --silos 3 --mode by-source
    """
    from photon.datasplit import split_corpus

    report = split_corpus(input_dir, out_dir, silos, mode=mode, seed=seed)  # type: ignore[arg-type]
    for silo_dir, files, size in zip(report.silo_dirs, report.files, report.bytes, strict=True):
        click.echo(f"{silo_dir}: {files} files, {size} bytes")
