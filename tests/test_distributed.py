"""One silo, several processes: rank-dealt data, the DDP trainer's parity, torchrun end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from photon.cli.localfed.launcher import Launcher
from photon.data import TokenLoader, TokenShards, prepare
from photon.errors import DataError
from photon.federation import FederationSpec
from photon.model import LlamaModel, ModelConfig, build_model
from photon.tokenizer import ByteTokenizer
from photon.trainer import Trainer, TrainerConfig
from photon.v1 import federation_pb2 as pb
from silo_agent.backend import LocalBackend, TrainingBackend
from silo_agent.distributed import RankGroupBackend, RankTraining
from silo_agent.ranks import RankGroup, RankLoader, init_group
from tests.harness import free_port, make_federation, wait_for, write_corpus

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend",
)

MODEL = ModelConfig(
    vocab_size=ByteTokenizer.vocab_size,
    dim=32,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    ffn_hidden=64,
    max_seq_len=64,
)
TCFG = TrainerConfig(
    lr=3e-3, warmup_steps=2, total_steps=20, batch_size=4, seq_len=32, device="cpu"
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = tmp_path_factory.mktemp("text")
    write_corpus(text, seed=0, docs=4)
    out = tmp_path_factory.mktemp("shards")
    prepare(text, out, ByteTokenizer(), heldout_fraction=0.0)
    return out


@pytest.fixture(scope="module")
def shards(shards_dir: Path) -> TokenShards:
    return TokenShards(shards_dir)


def plain_loader(shards: TokenShards) -> TokenLoader:
    return TokenLoader(shards, batch_size=TCFG.batch_size, seq_len=TCFG.seq_len, seed=7)


def rank_loader(shards: TokenShards, rank: int, world: int, batch_size: int = 4) -> RankLoader:
    return RankLoader(
        shards, rank=rank, world_size=world, batch_size=batch_size, seq_len=32, seed=7
    )


# -- data dealt out by rank ---------------------------------------------------------------------
def test_ranks_read_disjoint_windows_that_cover_each_epoch(shards: TokenShards) -> None:
    total = (len(shards.tokens("train")) - 1) // 32
    for epoch in (0, 1):
        orders = []
        for rank in range(3):
            loader = rank_loader(shards, rank, 3)
            loader.load_state_dict({**loader.state_dict(), "epoch": epoch})
            orders.append(loader._order)
        assert sum(len(o) for o in orders) == total
        np.testing.assert_array_equal(np.sort(np.concatenate(orders)), np.arange(total))


def test_one_rank_reads_exactly_what_the_plain_loader_reads(shards: TokenShards) -> None:
    plain = TokenLoader(shards, batch_size=16, seq_len=32, seed=7)
    ranked = rank_loader(shards, 0, 1, batch_size=16)
    for _ in range(2 * plain.windows // 16 + 3):  # past two epoch boundaries
        torch.testing.assert_close(ranked.next_batch(), plain.next_batch(), rtol=0, atol=0)


def test_loader_state_round_trips_and_refuses_another_world_size(shards: TokenShards) -> None:
    loader = rank_loader(shards, 1, 2)
    for _ in range(5):
        loader.next_batch()
    again = rank_loader(shards, 1, 2)
    again.load_state_dict(loader.state_dict())
    torch.testing.assert_close(again.next_batch(), loader.next_batch(), rtol=0, atol=0)
    with pytest.raises(DataError, match="--nproc_per_node 2"):
        rank_loader(shards, 1, 4).load_state_dict(loader.state_dict())


# -- the DDP trainer on one process -------------------------------------------------------------
@pytest.fixture
def group_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[RankGroup]:
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    group = init_group("cpu", env)
    try:
        yield group
    finally:
        dist.destroy_process_group()


def params_of(model: LlamaModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ddp_forward_gives_the_plain_gradients(
    shards: TokenShards, group_of_one: RankGroup
) -> None:
    plain = Trainer(build_model(MODEL, seed=0), TCFG, rank_loader(shards, 0, 1))
    ddp = RankTraining(group_of_one, build_model(MODEL, seed=0), TCFG, shards, seed=7).trainer(None)
    assert ddp.forward is not ddp.model.loss, "the DDP trainer must run through the wrapper"
    x, y = plain.loader.next_batch()
    plain.forward(x, y).backward()
    ddp.forward(x, y).backward()
    ddp_params = dict(ddp.model.named_parameters())
    for name, param in plain.model.named_parameters():
        assert param.grad is not None and float(param.grad.abs().sum()) > 0
        torch.testing.assert_close(ddp_params[name].grad, param.grad, rtol=0, atol=0)


def test_ddp_training_matches_plain_and_resumes_from_its_rank_folder(
    shards: TokenShards, group_of_one: RankGroup, tmp_path: Path
) -> None:
    plain = Trainer(build_model(MODEL, seed=0), TCFG, plain_loader(shards))
    plain.train(5, global_step=0)
    training = RankTraining(group_of_one, build_model(MODEL, seed=0), TCFG, shards, seed=7)
    first = training.trainer(None)
    stats = first.train(3, global_step=0)
    assert stats.tokens == 3 * TCFG.batch_size * TCFG.seq_len
    first.save_state(tmp_path)
    assert (tmp_path / "rank0" / "trainer.json").exists()
    training.trainer(tmp_path).train(2, global_step=3)
    want, got = params_of(plain.model), params_of(training.model)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_both_training_backends_run_two_rounds_bit_identically(
    shards: TokenShards, group_of_one: RankGroup, tmp_path: Path
) -> None:
    """What the agent does with a backend: start, a round, commit its state, a restored round."""
    spec = FederationSpec(seed=7)
    start = params_of(build_model(MODEL, seed=0))
    backends: dict[str, TrainingBackend] = {
        "local": LocalBackend(),
        "rank_group": RankGroupBackend(group_of_one),
    }
    ended = {}
    for name, backend in backends.items():
        model = build_model(MODEL, seed=1)  # the backend sets each round's parameters
        backend.start(spec, model, TCFG, shards)
        first = pb.Task(kind=pb.Task.TRAIN, round=0, local_steps=3, global_step=0)
        trainer = backend.trainer(first, start, None)
        trainer.train(first.local_steps, first.global_step)
        (tmp_path / name).mkdir()
        trainer.save_state(tmp_path / name)
        second = pb.Task(kind=pb.Task.TRAIN, round=1, local_steps=2, global_step=3)
        backend.trainer(second, params_of(model), tmp_path / name).train(2, 3)
        backend.finish(0)
        ended[name] = params_of(model)
    assert any(not torch.equal(ended["local"][k], v) for k, v in start.items()), "it trained"
    for key, want in ended["local"].items():
        torch.testing.assert_close(ended["rank_group"][key], want, rtol=0, atol=0)


def test_state_saved_by_a_single_process_silo_is_refused_with_the_fix(
    shards: TokenShards, group_of_one: RankGroup, tmp_path: Path
) -> None:
    Trainer(build_model(MODEL, seed=0), TCFG, plain_loader(shards)).save_state(tmp_path)
    training = RankTraining(group_of_one, build_model(MODEL, seed=0), TCFG, shards, seed=7)
    with pytest.raises(DataError, match="same --nproc_per_node"):
        training.trainer(tmp_path)


# -- two processes against one, on the same rows ------------------------------------------------
def _parity_worker(rank: int, port: int, shards_dir: str, out: str) -> None:
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
    os.environ.update({**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    group = init_group("cpu", env)
    try:
        model = build_model(MODEL, seed=rank)  # rank 0's parameters must win
        training = RankTraining(group, model, TCFG, TokenShards(Path(shards_dir)), seed=7)
        stats = training.trainer(None).train(3, global_step=0)
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_file(params, str(Path(out) / f"rank{rank}.safetensors"))
        (Path(out) / f"rank{rank}.json").write_text(json.dumps({"tokens": stats.tokens}))
    finally:
        dist.destroy_process_group()


class JoinedLoader(TokenLoader):
    """Rank 0's and rank 1's batches as one batch: what two DDP ranks see together."""

    def __init__(self, shards: TokenShards) -> None:
        self.parts = [rank_loader(shards, r, 2) for r in (0, 1)]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(p.next_batch() for p in self.parts), strict=True)
        return torch.cat(xs), torch.cat(ys)


def test_two_ranks_train_like_one_process_on_their_joined_batches(
    shards_dir: Path, shards: TokenShards, tmp_path: Path
) -> None:
    mp.spawn(_parity_worker, args=(free_port(), str(shards_dir), str(tmp_path)), nprocs=2)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    one = Trainer(build_model(MODEL, seed=0), TCFG, JoinedLoader(shards))
    one.train(3, global_step=0)
    for name, want in params_of(one.model).items():
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], want, rtol=1e-4, atol=1e-5)
    tokens = json.loads((tmp_path / "rank0.json").read_text())["tokens"]
    assert tokens == 2 * 3 * TCFG.batch_size * TCFG.seq_len


# -- a real federation with one silo under torchrun ---------------------------------------------
def start_torchrun_silo(
    fed: Launcher, name: str, nproc: int, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m photon silo run`,
    with `env` added to this job's environment."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    args = ["silo", "run", "--config", str(fed.config_path(name))]
    return fed.spawn(name, args, env=env, python=[*torchrun, "--nproc_per_node", str(nproc)])


def silo_tokens(fed: Launcher) -> list[dict[str, int]]:
    return [{s: v["tokens"] for s, v in r["silos"].items()} for r in fed.summary()["rounds"]]


def test_a_silo_under_torchrun_trains_with_two_processes(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, silos=2, rounds=2)
    try:
        fed.start_aggregator()
        fed.start_silo("silo-1")
        start_torchrun_silo(fed, "silo-0", nproc=2)
        codes = fed.wait_all(timeout=240)
    finally:
        fed.stop_all()
    assert codes == {"aggregator": 0, "silo-1": 0, "silo-0": 0}, fed.log("silo-0")
    assert fed.summary()["done"] is True
    single = 3 * 4 * 32  # local_steps x batch_size x seq_len of one process
    assert silo_tokens(fed) == [{"silo-0": 2 * single, "silo-1": single}] * 2
    trainer_dirs = list((tmp_path / "state" / "silo-0" / "trainer").iterdir())
    assert [d.name for d in trainer_dirs] == ["r000001"]
    assert sorted(p.name for p in trainer_dirs[0].iterdir()) == ["rank0", "rank1"]
    log = (tmp_path / "silo-0.log").read_text()
    started = [json.loads(line) for line in log.splitlines() if '"rank_started"' in line]
    assert sorted(e["rank"] for e in started) == [0, 1]


@pytest.mark.slow
def test_a_restarted_torchrun_job_resumes_from_the_committed_round(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, silos=1, rounds=3)
    try:
        fed.start_aggregator()
        job = start_torchrun_silo(fed, "silo-0", nproc=2)
        wait_for(lambda: fed.summary().get("version", 0) >= 1, 180, "the first round")
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=60) != 0
        start_torchrun_silo(fed, "silo-0", nproc=2)
        codes = fed.wait_all(timeout=240)
    finally:
        fed.stop_all()
    assert codes == {"aggregator": 0, "silo-0": 0}, fed.log("silo-0")
    assert silo_tokens(fed) == [{"silo-0": 2 * 3 * 4 * 32}] * 3
    started = (tmp_path / "silo-0.log").read_text().count('"rank_started"')
    assert started == 4, "both ranks started twice"
