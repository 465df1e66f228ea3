"""`parallelism = "fsdp"`: FSDP2 over two gloo processes against one process, a torchrun silo in
a real federation, and kill -9 of either rank mid-round.

Tolerance of the parity tests: the two ranks' gradients are averaged by a reduce-scatter and the
clipping norm is summed from per-shard norms, so sums are taken in another order than one
process takes them; a few float32 roundings per step, as for DDP (rtol 1e-4, atol 1e-5 after 5
AdamW steps; measured: max |difference| ~ 1e-7). The optimizer itself is elementwise on each
shard, exactly as on the whole tensor.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from aggregator.audit import read_audit
from photon.cli.localfed.launcher import Launcher
from photon.data import TokenShards, prepare
from photon.errors import ConfigError, DataError
from photon.faults import ENV as CRASH_ENV
from photon.federation import FederationSpec
from photon.model import LlamaModel, build_model
from photon.tokenizer import ByteTokenizer
from photon.trainer import Trainer
from photon.v1 import federation_pb2 as pb
from silo_agent.backend import LocalBackend
from silo_agent.config import SiloSection
from silo_agent.distributed import RankGroupBackend
from silo_agent.fsdp import ShardedTraining, fsdp_training, mixed_precision
from silo_agent.ranks import RankGroup, init_group
from tests.harness import free_port, make_federation, write_corpus
from tests.test_distributed import (
    MODEL,
    TCFG,
    JoinedLoader,
    params_of,
    silo_tokens,
    start_torchrun_silo,
)

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend",
)
SPEC = FederationSpec(seed=7, model=MODEL.to_dict())


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


# -- settings -----------------------------------------------------------------------------------
def test_mixed_precision_casts_on_cuda_only() -> None:
    cuda = mixed_precision(torch.device("cuda", 0))
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)
    cpu = mixed_precision(torch.device("cpu"))
    assert (cpu.param_dtype, cpu.reduce_dtype) == (None, None)


def test_activation_checkpointing_needs_fsdp() -> None:
    base: dict[str, Any] = {"name": "s", "data_dir": Path("d"), "insecure": True}
    assert SiloSection(**base).parallelism == "ddp"
    SiloSection(**base, parallelism="fsdp", activation_checkpointing=True)
    with pytest.raises(ConfigError, match=re.escape('needs silo.parallelism = "fsdp"')):
        SiloSection(**base, activation_checkpointing=True)


# -- two FSDP processes against one process, on the same rows -----------------------------------
def _parity_worker(rank: int, port: int, shards_dir: str, out: str, checkpointing: bool) -> None:
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
    os.environ.update({**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    group = init_group("cpu", env)
    try:
        start = params_of(build_model(MODEL, seed=0)) if rank == 0 else None
        training = ShardedTraining(
            group, SPEC, TCFG, TokenShards(Path(shards_dir)),
            activation_checkpointing=checkpointing,
        )  # fmt: skip
        mlp_calls = _count_calls(cast(nn.Module, training.model.model.layers[0].mlp))
        first = training.trainer(None, start)
        stats = first.train(3, global_step=0)
        assert len(mlp_calls) == 3 * (2 if checkpointing else 1), "recomputed iff checkpointing"
        trained = _applied(training, start)
        first.save_state(Path(out) / "state" if rank == 0 else None)
        # the next round starts from where this one ended, its moments restored by DCP
        training.trainer(Path(out) / "state", trained).train(2, 3)
        ended = _applied(training, trained)
        if ended is not None:
            save_file(ended, str(Path(out) / "rank0.safetensors"))
            (Path(out) / "rank0.json").write_text(json.dumps({"tokens": stats.tokens}))
    finally:
        dist.destroy_process_group()


def _applied(
    training: ShardedTraining, params: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor] | None:
    """The trained parameters on rank 0 (`params` plus the round's delta), None elsewhere."""
    given = None if params is None else {k: v.clone() for k, v in params.items()}
    delta = training.local_delta(given)
    if params is None or delta is None:
        return None
    return {k: params[k] + delta[k] for k in params}


def _count_calls(module: torch.nn.Module) -> list[int]:
    """Calls of `module.forward` (a recomputation runs it again; it runs no forward hooks)."""
    calls: list[int] = []
    forward = module.forward

    def counted(*args: Any) -> Any:
        calls.append(1)
        return forward(*args)

    module.forward = counted
    return calls


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation_ckpt"])
def test_two_fsdp_ranks_train_like_one_process_on_their_joined_batches(
    shards_dir: Path, tmp_path: Path, checkpointing: bool
) -> None:
    args = (free_port(), str(shards_dir), str(tmp_path), checkpointing)
    (tmp_path / "state").mkdir()  # as the agent makes the round's trainer folder
    mp.spawn(_parity_worker, args=args, nprocs=2)
    got = load_file(str(tmp_path / "rank0.safetensors"))
    one = Trainer(build_model(MODEL, seed=0), TCFG, JoinedLoader(TokenShards(shards_dir)))
    one.train(5, global_step=0)
    for name, want in params_of(one.model).items():
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-5)
    tokens = json.loads((tmp_path / "rank0.json").read_text())["tokens"]
    assert tokens == 2 * 3 * TCFG.batch_size * TCFG.seq_len
    state = tmp_path / "state"
    assert sorted(p.name for p in (state / "optimizer").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert sorted(p.name for p in (state / "rank1").iterdir()) == ["cursor.json", "rng.safetensors"]


# -- one process: the FSDP backend is the local one ---------------------------------------------
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


def _two_rounds(
    backend: Any, model: LlamaModel, shards: TokenShards, folder: Path
) -> list[dict[str, torch.Tensor]]:
    """What the agent does with a backend: start, a round, its delta, commit its state, a
    restored round from the global model plus that delta, its delta. The two deltas."""
    backend.start(SPEC, model, TCFG, shards)
    first = pb.Task(kind=pb.Task.TRAIN, round=0, local_steps=3, global_step=0)
    start = params_of(build_model(MODEL, seed=0))
    trainer = backend.trainer(first, start, None)
    trainer.train(first.local_steps, first.global_step)
    deltas = [backend.local_delta(start)]  # under FSDP `start` itself becomes the delta
    folder.mkdir()
    trainer.save_state(folder)
    second = pb.Task(kind=pb.Task.TRAIN, round=1, local_steps=2, global_step=3)
    base = params_of(build_model(MODEL, seed=0))
    params = {k: base[k] + d for k, d in deltas[0].items()}
    backend.trainer(second, params, folder).train(2, 3)
    deltas.append(backend.local_delta(params))
    backend.finish(0)
    return deltas


def test_fsdp_backend_of_one_process_trains_bit_identically_to_the_local_one(
    shards_dir: Path, group_of_one: RankGroup, tmp_path: Path
) -> None:
    shards = TokenShards(shards_dir)
    local = build_model(MODEL, seed=1)
    want = _two_rounds(LocalBackend(), local, shards, tmp_path / "local")
    fsdp = RankGroupBackend(group_of_one, fsdp_training(activation_checkpointing=False))
    got = _two_rounds(fsdp, build_model(MODEL, seed=1), shards, tmp_path / "fsdp")
    assert all(bool(d.abs().max() > 0) for d in want[1].values()), "it trained"
    for round_ in (0, 1):
        assert list(got[round_]) == list(want[round_]) == sorted(want[round_]), "name order"
        for key, value in want[round_].items():
            torch.testing.assert_close(got[round_][key], value, rtol=0, atol=0)
    ddp = RankGroupBackend(group_of_one)
    ddp.start(SPEC, build_model(MODEL, seed=1), TCFG, shards)
    task = pb.Task(kind=pb.Task.TRAIN, round=1, local_steps=2, global_step=3)
    with pytest.raises(DataError, match='saved with parallelism = "fsdp"'):
        ddp.trainer(task, params_of(local), tmp_path / "fsdp")
    with pytest.raises(DataError, match='not saved with parallelism = "fsdp"'):
        fsdp.trainer(task, params_of(local), tmp_path / "local")


# -- a real federation: a torchrun silo with parallelism = "fsdp" -------------------------------
def run_fsdp_silo(root: Path, crash_at: str | None = None) -> Launcher:
    """One silo of two FSDP ranks (activation checkpointing on), 2 rounds of 3 steps; with
    `crash_at` a rank kills itself (kill -9) there and the same torchrun command runs again."""
    fed = make_federation(root, silos=1, rounds=2)
    silo = fed.silos["silo-0"].silo
    silo.parallelism, silo.activation_checkpointing = "fsdp", True
    fed.write_configs()
    try:
        fed.start_aggregator()
        job = start_torchrun_silo(
            fed, "silo-0", 2, None if crash_at is None else {CRASH_ENV: crash_at}
        )
        if crash_at is not None:
            assert job.wait(timeout=240) != 0, fed.log("silo-0")
            point = crash_at.partition("@")[0]
            assert f'"point": "{point}"' in fed.log("silo-0", None), fed.log("silo-0")
            start_torchrun_silo(fed, "silo-0", 2)
        codes = fed.wait_all(timeout=240)
    finally:
        fed.stop_all()
    assert codes == {"aggregator": 0, "silo-0": 0}, fed.log("silo-0")
    assert fed.summary()["done"] is True
    return fed


def update_digests(fed: Launcher) -> list[tuple[int, str]]:
    """(round, digest) of every accepted update, from the aggregator's audit log."""
    entries, broken = read_audit(fed.state_dir / "audit.jsonl")
    assert broken is None
    return sorted((e["round"], e["digest"]) for e in entries if e["verdict"] == "accepted")


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory: pytest.TempPathFactory) -> Launcher:
    return run_fsdp_silo(tmp_path_factory.mktemp("fsdp-fault-free"))


def test_a_torchrun_silo_trains_with_fsdp(fault_free: Launcher) -> None:
    assert silo_tokens(fault_free) == [{"silo-0": 2 * 3 * 4 * 32}] * 2
    assert len(update_digests(fault_free)) == 2
    trainer_dir = fault_free.root / "state" / "silo-0" / "trainer" / "r000001"
    assert sorted(p.name for p in trainer_dir.iterdir()) == ["optimizer", "rank0", "rank1"]
    assert (trainer_dir / "optimizer" / ".metadata").exists()
    started = fault_free.log("silo-0", None).count('"rank_started"')
    assert started == 2


@pytest.mark.parametrize(
    "crash_at", ["silo.train_step@5", "silo.follower_step@5"], ids=["rank0", "rank1"]
)
def test_kill9_of_a_rank_mid_round_redoes_the_round_to_the_same_delta(
    tmp_path: Path, fault_free: Launcher, crash_at: str
) -> None:
    """Round 1, step 2 (round 0 has 3 steps): rank 0 is the agent, rank 1 a follower."""
    faulted = run_fsdp_silo(tmp_path, crash_at)
    assert update_digests(faulted) == update_digests(fault_free)
    assert faulted.summary()["param_digest"] == fault_free.summary()["param_digest"]
    assert faulted.log("silo-0", None).count('"rank_started"') == 4, "both ranks started twice"
