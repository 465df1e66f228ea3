"""Token shards (prepare, TokenShards, TokenLoader, eval_batches), corpus split, `photon data`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from photon.cli.data import data as data_cli
from photon.data import TokenLoader, TokenShards, eval_batches, iter_documents, prepare
from photon.datasplit import split_corpus
from photon.errors import DataError
from photon.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def write_corpus(root: Path, n_txt: int = 12) -> Path:
    """.txt, .py, .jsonl and .gz documents, some in sub-folders."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_txt):
        sub = root / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox " * (i + 3))
    (root / "code.py").write_text("def f(x):\n    return x * 2\n" * 5)
    lines = [json.dumps({"text": f"json line {i} " * 4}) for i in range(5)]
    (root / "lines.jsonl").write_text("\n".join(lines) + "\n\n")
    (root / "zipped.txt.gz").write_bytes(gzip.compress(b"gzipped text document " * 9))
    (root / "notes.bin").write_bytes(b"\x00\x01 not text")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def prepared(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(corpus, out, TOK, heldout_fraction=0.3, seed=0)
    return out


def decode_docs(tokens: np.ndarray) -> list[str]:
    """Split a token stream at EOS and decode each document."""
    docs, start = [], 0
    for end in np.flatnonzero(tokens == TOK.eos_id):
        docs.append(TOK.decode(tokens[start:end].tolist()))
        start = int(end) + 1
    assert start == len(tokens), "stream must end with EOS"
    return docs


# -- prepare ------------------------------------------------------------------------------------
def test_prepare_reads_every_kind_and_splits_by_document(corpus: Path, prepared: Path) -> None:
    meta = json.loads((prepared / "meta.json").read_text())
    expected = dict(iter_documents(corpus))
    assert meta["documents"] == len(expected) == 12 + 1 + 5 + 1
    assert "gzipped text document " * 9 in expected.values()
    assert "json line 2 " * 4 in expected.values()
    shards = TokenShards(prepared)
    train = decode_docs(np.asarray(shards.tokens("train")))
    held = decode_docs(np.asarray(shards.tokens("heldout")))
    assert train and held, "0.3 of 19 documents should give both splits"
    assert sorted(train + held) == sorted(expected.values())
    assert not set(train) & set(held)
    assert meta["train_tokens"] == len(shards.tokens("train"))
    assert meta["tokenizer_digest"] == TOK.digest() and meta["dtype"] == "uint16"


def test_prepare_is_deterministic(corpus: Path, prepared: Path, tmp_path: Path) -> None:
    prepare(corpus, tmp_path, TOK, heldout_fraction=0.3, seed=0)
    for name in ("train.bin", "heldout.bin", "meta.json"):
        assert (tmp_path / name).read_bytes() == (prepared / name).read_bytes()


def test_another_seed_picks_another_heldout(corpus: Path, prepared: Path, tmp_path: Path) -> None:
    prepare(corpus, tmp_path, TOK, heldout_fraction=0.3, seed=1)
    assert (tmp_path / "heldout.bin").read_bytes() != (prepared / "heldout.bin").read_bytes()


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_heldout_fraction_edges(corpus: Path, tmp_path: Path, fraction: float) -> None:
    report = prepare(corpus, tmp_path, TOK, heldout_fraction=fraction)
    total = report.train_tokens + report.heldout_tokens
    assert (report.heldout_tokens if fraction == 0.0 else report.train_tokens) == 0
    shards = TokenShards(tmp_path)
    empty = "heldout" if fraction == 0.0 else "train"
    assert len(shards.tokens(empty)) == 0
    assert len(shards.tokens("train")) + len(shards.tokens("heldout")) == total > 0


def test_heldout_fraction_out_of_range(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="heldout_fraction"):
        prepare(corpus, tmp_path, TOK, heldout_fraction=1.5)


def test_max_bytes_stops_early(corpus: Path, tmp_path: Path) -> None:
    report = prepare(corpus, tmp_path, TOK, max_bytes=1)
    assert report.documents == 1


def test_bad_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text('{"text": "fine"}\n{"no_text": 1}\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: expected a JSON object with a 'text'"):
        prepare(src, tmp_path / "out", TOK)


def test_empty_folder_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="no text documents"):
        prepare(tmp_path / "in", tmp_path / "out", TOK)


def test_failed_prepare_leaves_earlier_shards_intact(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(corpus, out, TOK)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no text documents"):
        prepare(tmp_path / "empty", out, TOK)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    TokenShards(out)


def test_missing_input_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "nope", tmp_path / "out", TOK)


# -- TokenShards --------------------------------------------------------------------------------
def test_unprepared_folder_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="photon data prepare"):
        TokenShards(tmp_path)


def test_size_mismatch_is_detected(prepared: Path, tmp_path: Path) -> None:
    for name in ("train.bin", "heldout.bin", "meta.json"):
        (tmp_path / name).write_bytes((prepared / name).read_bytes())
    with (tmp_path / "train.bin").open("ab") as fh:
        fh.write(b"\x00\x00")
    with pytest.raises(DataError, match=r"train\.bin holds .* bytes, meta\.json says"):
        TokenShards(tmp_path)
    (tmp_path / "train.bin").unlink()
    with pytest.raises(DataError, match="prepare the folder again"):
        TokenShards(tmp_path)


def test_corrupt_meta(prepared: Path, tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        TokenShards(tmp_path)


def test_check_tokenizer(prepared: Path) -> None:
    shards = TokenShards(prepared)
    shards.check_tokenizer(TOK.digest())
    other = "f" * 64
    with pytest.raises(DataError, match="prepared with tokenizer 'byte'") as info:
        shards.check_tokenizer(other)
    assert "ffffffffffff" in str(info.value)
    assert "prepare the data again" in str(info.value)


# -- TokenLoader --------------------------------------------------------------------------------
def loader(shards: TokenShards, batch_size: int, seq_len: int = 16, seed: int = 5) -> TokenLoader:
    return TokenLoader(shards, batch_size=batch_size, seq_len=seq_len, seed=seed)


def test_batches_are_shifted_windows_of_the_shard(prepared: Path) -> None:
    shards = TokenShards(prepared)
    x, y = loader(shards, 4).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    data = torch.from_numpy(np.asarray(shards.tokens("train"), dtype=np.int64))
    for row in x:
        starts = [s for s in range(0, len(data) - 16, 16) if torch.equal(data[s : s + 16], row)]
        assert starts, "every row is an aligned window of the train split"


def test_an_epoch_visits_every_window_once(prepared: Path) -> None:
    shards = TokenShards(prepared)
    ld = loader(shards, 1)
    data = np.asarray(shards.tokens("train"), dtype=np.int64)
    windows = sorted(tuple(data[i * 16 : i * 16 + 16].tolist()) for i in range(ld.windows))
    seen = sorted(tuple(ld.next_batch()[0][0].tolist()) for _ in range(ld.windows))
    assert seen == windows and ld.epoch == 0
    ld.next_batch()
    assert ld.epoch == 1


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 40),
    m=st.integers(1, 20),
    batch_size=st.integers(1, 9),
    seq_len=st.sampled_from([8, 16, 33]),
)
def test_loader_resumes_exactly(
    prepared: Path, n: int, m: int, batch_size: int, seq_len: int
) -> None:
    shards = TokenShards(prepared)
    straight = loader(shards, batch_size, seq_len)
    expected = [straight.next_batch() for _ in range(n + m)][n:]
    first = loader(shards, batch_size, seq_len)
    for _ in range(n):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # it must survive JSON
    resumed = loader(shards, batch_size, seq_len)
    resumed.load_state_dict(state)
    for want, got in zip(expected, (resumed.next_batch() for _ in range(m)), strict=True):
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_loader_refuses_state_of_another_seed(prepared: Path) -> None:
    shards = TokenShards(prepared)
    state = loader(shards, 2, seed=1).state_dict()
    with pytest.raises(DataError, match="another seed"):
        loader(shards, 2, seed=2).load_state_dict(state)


def test_loader_on_too_little_text(prepared: Path) -> None:
    with pytest.raises(DataError, match="fewer than one sequence"):
        loader(TokenShards(prepared), 1, seq_len=10**7)


# -- eval_batches -------------------------------------------------------------------------------
def test_eval_batches_are_sequential_heldout_windows(prepared: Path) -> None:
    shards = TokenShards(prepared)
    held = torch.from_numpy(np.asarray(shards.tokens("heldout"), dtype=np.int64))
    batches = list(eval_batches(shards, seq_len=8, batch_size=3, max_batches=2))
    assert 1 <= len(batches) <= 2 and sum(len(x) for x, _ in batches) <= 6
    x, y = batches[0]
    assert torch.equal(x[0], held[:8]) and torch.equal(y[0], held[1:9])


def test_eval_batches_on_empty_split_raises_when_iterated(corpus: Path, tmp_path: Path) -> None:
    prepare(corpus, tmp_path, TOK, heldout_fraction=0.0)
    batches = eval_batches(TokenShards(tmp_path), seq_len=8, batch_size=2, max_batches=4)
    with pytest.raises(DataError, match=r"held-out split .* is empty"):
        next(batches)


# -- split_corpus -------------------------------------------------------------------------------
def silo_files(out: Path) -> dict[str, list[Path]]:
    return {
        d.name: sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())
        for d in sorted(out.iterdir())
    }


def source_tree(root: Path) -> Path:
    sizes = {"alpha": 4000, "beta": 2500, "gamma": 2000, "delta": 1500, "eps": 300}
    for project, size in sizes.items():
        for j in range(3):
            (root / project / "src").mkdir(parents=True, exist_ok=True)
            (root / project / "src" / f"m{j}.py").write_text("x" * (size // 3))
    (root / "top.txt").write_text("y" * 100)
    for skipped in ("alpha/site-packages/pkg", "beta/__pycache__", "site-packages"):
        (root / skipped).mkdir(parents=True, exist_ok=True)
        (root / skipped / "skip.py").write_text("never copied")
    (root / "alpha" / "logo.png").write_bytes(b"\x89PNG")
    return root


def test_iid_split_puts_every_file_in_exactly_one_silo(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "src")
    report = split_corpus(src, tmp_path / "out", 3, mode="iid", seed=4)
    got = silo_files(tmp_path / "out")
    assert list(got) == ["silo-0", "silo-1", "silo-2"]
    everything = [f for files in got.values() for f in files]
    expected = sorted(p.relative_to(src) for p in src.rglob("*.py") if "skip" not in p.name)
    assert sorted(everything) == sorted([*expected, Path("top.txt")])
    assert [len(f) for f in got.values()] == [6, 5, 5] == list(report.files)
    for silo, files in got.items():
        for f in files:
            assert (tmp_path / "out" / silo / f).read_bytes() == (src / f).read_bytes()


def test_iid_split_depends_on_the_seed(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "src")
    split_corpus(src, tmp_path / "a", 2, seed=0)
    split_corpus(src, tmp_path / "b", 2, seed=0)
    split_corpus(src, tmp_path / "c", 2, seed=1)
    assert silo_files(tmp_path / "a") == silo_files(tmp_path / "b")
    assert silo_files(tmp_path / "a") != silo_files(tmp_path / "c")


def test_by_source_keeps_each_entry_whole_and_balances_bytes(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "src")
    report = split_corpus(src, tmp_path / "out", 2, mode="by-source")
    got = silo_files(tmp_path / "out")
    owners: dict[str, set[str]] = {}
    for silo, files in got.items():
        for f in files:
            owners.setdefault(f.parts[0], set()).add(silo)
    assert all(len(s) == 1 for s in owners.values()), owners
    assert set(owners) == {"alpha", "beta", "gamma", "delta", "eps", "top.txt"}
    # greedy, largest first onto the lighter silo: alpha 3999 -> 0, beta 2499 -> 1,
    # gamma 1998 -> 1, delta 1500 -> 0, eps 300 -> 1, top.txt 100 -> 1
    assert owners["alpha"] == owners["delta"] == {"silo-0"}
    assert owners["beta"] == owners["gamma"] == owners["eps"] == owners["top.txt"] == {"silo-1"}
    assert sum(report.bytes) == sum(p.stat().st_size for p in (tmp_path / "out").rglob("*.*"))
    assert abs(report.bytes[0] - report.bytes[1]) < 1000


def test_split_errors(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "src")
    with pytest.raises(DataError, match="fewer than 7 silos"):
        split_corpus(src, tmp_path / "o1", 7, mode="by-source")
    with pytest.raises(DataError, match="fewer than 99 silos"):
        split_corpus(src, tmp_path / "o2", 99)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        split_corpus(src, tmp_path / "full", 2)
    with pytest.raises(DataError, match="inside the input folder"):
        split_corpus(src, src / "out", 2)
    with pytest.raises(DataError, match="unknown split mode"):
        split_corpus(src, tmp_path / "o3", 2, mode="zipf")  # type: ignore[arg-type]


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_prepare_prints_one_summary_line(corpus: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        data_cli, ["prepare", "--input", str(corpus), "--out", str(tmp_path), "--heldout", "0.2"]
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "meta.json").read_text())
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"{meta['documents']} documents" in lines[0]
    assert f"{meta['train_tokens']} train tokens" in lines[0]


def test_cli_prepare_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        data_cli, ["prepare", "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "Error: no text documents" in result.output and "Traceback" not in result.output


def test_cli_split_then_prepare_each_silo(tmp_path: Path) -> None:
    src = source_tree(tmp_path / "src")
    runner = CliRunner()
    args = ["split", "--input", str(src), "--out", str(tmp_path / "out"), "--silos", "3"]
    split = runner.invoke(data_cli, [*args, "--mode", "by-source"])
    assert split.exit_code == 0, split.output
    assert len(split.output.strip().splitlines()) == 3
    for silo in ("silo-0", "silo-1", "silo-2"):
        silo_dir = tmp_path / "out" / silo
        assert f"{silo_dir}: " in split.output
        result = runner.invoke(
            data_cli, ["prepare", "--input", str(silo_dir), "--out", str(tmp_path / "d" / silo)]
        )
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [[], ["prepare"], ["split"]])
def test_cli_help_has_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(data_cli, [*command, "--help"])
    assert result.exit_code == 0
    if command:
        assert f"photon data {command[0]} --input" in result.output
