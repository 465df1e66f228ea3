"""The silo agent's main loop: join, ask for work, train or evaluate, upload, until done.

How the local steps run (this process, or a torchrun rank group) is the `TrainingBackend` the
agent is given (`silo_agent/backend.py`); the agent owns everything federated.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
import torch
from safetensors.torch import load_file, save_file

from bandwidth.codec import ObjectInfo, write_object
from bandwidth.feedback import ErrorFeedback
from bandwidth.ratelimit import TokenBucket, parse_rate
from photon.codecs import is_lossy
from photon.data import TokenShards, eval_batches
from photon.errors import DataError
from photon.evaluation import evaluate_loss
from photon.faults import crash_point
from photon.federation import FederationSpec
from photon.logs import get_logger
from photon.metrics_http import serve_metrics
from photon.model import LlamaModel, ModelConfig, build_model, empty_model
from photon.signing import sign_digest
from photon.tls import TLSFiles
from photon.trainer import TrainStats
from photon.update import UpdateRecord
from photon.v1 import federation_pb2 as pb
from silo_agent.backend import RoundTrainer, TrainingBackend, trainer_config
from silo_agent.client import AggregatorClient, status_of
from silo_agent.config import SiloConfig
from silo_agent.deadline import log_train_task
from silo_agent.heartbeat import Heartbeat
from silo_agent.metrics import SiloMetrics
from silo_agent.progress import Progress
from silo_agent.state import SiloState
from silo_agent.steps import run_local_steps
from silo_agent.transfers import PendingUpdate, UploadOutcome, download, upload

log = get_logger("silo_agent")
FEEDBACK_FILE = "error_feedback.safetensors"


class SiloAgent:
    def __init__(
        self,
        cfg: SiloConfig,
        *,
        backend: TrainingBackend,
        stop: threading.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.backend = backend
        self.stop = stop or threading.Event()
        self.state = SiloState(cfg.silo.state_dir)
        self.shards = TokenShards(cfg.silo.data_dir)
        self.client = AggregatorClient(cfg)
        self.up_limit = _bucket(cfg.transfer.max_upload_rate)
        self.down_limit = _bucket(cfg.transfer.max_download_rate)
        self.metrics = SiloMetrics()
        self.heartbeat = Heartbeat(self.client, on_version=self.metrics.global_version.set)
        self.last_train_s: float | None = None  # the last round's training time, for deadlines
        serve_metrics(cfg.silo.metrics_listen, self.metrics.registry)

    def run(self) -> int:
        """Work until the federation is done (exit code 0) or `stop` is set."""
        meta = self.shards.meta
        reply = self.client.join(str(meta["tokenizer_digest"]), int(meta["train_tokens"]))
        self.spec = FederationSpec.from_json(reply.federation_spec_json)
        self.shards.check_tokenizer(self.spec.tokenizer_digest)
        self.model_config = ModelConfig.from_dict(self.spec.model)
        self.model = self._new_model(self.model_config)
        self.tcfg = trainer_config(self.spec, self.cfg)
        log.info(
            "joined",
            silo=reply.silo_id,
            federation=self.spec.name,
            preset=self.spec.preset,
            codec=self.spec.codec,
            rounds=self.spec.rounds,
        )
        self.heartbeat.start(reply.heartbeat_interval_s)
        try:
            self.backend.start(self.spec, self.model, self.tcfg, self.shards)
            code = self._loop()
            self.heartbeat.stop()  # it left the federation: no late heartbeat while training stops
            self.backend.finish(code)
            return code
        finally:
            self.heartbeat.stop()

    def _new_model(self, cfg: ModelConfig) -> LlamaModel:
        """The agent's model: the one the backend trains, or (a backend whose model is its own:
        FSDP) one that only evaluates, holding no weights of its own: `_evaluate` lends it the
        global parameters, so the host keeps a single full copy of the model."""
        if self.backend.model_owns_weights:
            return build_model(cfg, seed=self.spec.seed)
        return empty_model(cfg)

    def _loop(self) -> int:
        while not self.stop.is_set():
            task = self.client.get_task(self.state.held_version())
            if task.kind in (pb.Task.TRAIN, pb.Task.EVAL):
                self._work_on(task)
            elif task.kind == pb.Task.DONE:
                log.info("federation_done", message=task.message)
                self.heartbeat.stop()
                self.client.leave("done")
                return 0
            else:
                self.heartbeat.phase = "idle"
                self.stop.wait(max(0.2, min(task.retry_after_s or 1.0, 5.0)))
        self.client.leave("stopped")
        return 0

    def _work_on(self, task: pb.Task) -> None:
        """Train or evaluate. A version the aggregator no longer has (NOT_FOUND: it restarted
        from an older checkpoint after finding the newest corrupt) withdraws the task: the
        next GetTask says what to do instead. A task based on a version older than the one
        held means the aggregator went back: the held newer versions are stale."""
        dropped = self.state.forget_globals_after(task.base_version)
        if dropped:
            log.warning("global_discarded", versions=dropped, task_version=task.base_version)
        try:
            if task.kind == pb.Task.TRAIN:
                self._train_round(task)
            else:
                self._final_eval(task)
        except grpc.RpcError as exc:
            if status_of(exc) != grpc.StatusCode.NOT_FOUND:
                raise
            log.warning("task_withdrawn", round=task.round, version=task.base_version)

    # -- one round ----------------------------------------------------------------------------
    def _train_round(self, task: pb.Task) -> None:
        pending = self.state.pending
        if pending is not None and pending.update.round == task.round:
            self._upload(pending)
            return
        if pending is not None:
            log.info("pending_dropped", round=pending.update.round, reason="its round has closed")
            self.state.clear_pending()
        log_train_task(task, self.last_train_s)
        params = self._global(task.base_version)
        base_eval = self._evaluate(params)
        self.heartbeat.set(round_=task.round, phase="train")
        self.metrics.round.set(task.round)
        trainer = self.backend.trainer(task, params, self.state.trainer_dir)
        started = time.monotonic()
        stats = self._train(trainer, task)
        self.last_train_s = time.monotonic() - started
        log.info(
            "local_training_done",
            round=task.round,
            steps=task.local_steps,
            train_loss=round(stats.mean_loss, 4),
            tokens=stats.tokens,
            tokens_per_s=round(stats.tokens_per_s, 1),
            base_eval_loss=round(base_eval, 4),
        )
        pending = self._commit(task, trainer, params, stats, base_eval, time.monotonic() - started)
        self._upload(pending)

    def _train(self, trainer: RoundTrainer, task: pb.Task) -> TrainStats:
        """Local steps, reporting progress to the heartbeat, metrics and a bar or log lines."""
        return run_local_steps(
            trainer, task.local_steps, task.global_step, self.heartbeat, self.metrics
        )

    def _counter(self, bar: Progress, direction: str) -> Callable[[int], None]:
        def count(n: int) -> None:
            bar.update(n)
            self.metrics.bytes.labels(direction).inc(n)

        return count

    # -- committing a round's local work ---------------------------------------------------
    def _commit(
        self,
        task: pb.Task,
        trainer: RoundTrainer,
        params: dict[str, torch.Tensor],
        stats: TrainStats,
        base_eval: float,
        seconds: float,
    ) -> PendingUpdate:
        """Encode the delta (with error feedback) and commit the round's local work: the encoded
        update, the trainer state and the feedback residual, then one record naming them all."""
        delta = self.backend.local_delta(params)  # params become the delta under fsdp
        trainer_dir = self.state.new_trainer_dir(task.round)
        feedback = self._feedback()
        compensated = feedback.compensate(delta) if feedback is not None else delta
        info = self._write_update(task.round, compensated)
        trainer.save_state(trainer_dir)
        if feedback is not None:
            self._save_feedback(feedback, compensated, trainer_dir)
        pending = self._pending_update(task, info, stats, base_eval, seconds)
        self.state.commit_round(task.round, trainer_dir, pending)
        crash_point("silo.round_committed")
        return pending

    def _write_update(self, round_: int, delta: Mapping[str, torch.Tensor]) -> ObjectInfo:
        """The round's update, encoded with the federation's codec into its pending file."""
        path = self.state.pending_path(round_)
        return write_object(path, delta, self.spec.codec, block_size=self.spec.block_size)

    def _save_feedback(
        self, feedback: ErrorFeedback, compensated: Mapping[str, torch.Tensor], trainer_dir: Path
    ) -> None:
        """Keep what the codec lost of `compensated` for the next round, in the trainer state."""
        feedback.update_from_codec(compensated, self.spec.codec, self.spec.block_size)
        save_file(feedback.state_dict(), str(trainer_dir / FEEDBACK_FILE))

    def _pending_update(
        self, task: pb.Task, info: ObjectInfo, stats: TrainStats, base_eval: float, seconds: float
    ) -> PendingUpdate:
        """The record of the encoded update, signed, as it will be uploaded."""
        update = UpdateRecord(
            round=task.round,
            base_version=task.base_version,
            transfer_id=f"{self.cfg.silo.name}-r{task.round}-{info.digest[:16]}",
            digest=info.digest,
            size=info.size,
            num_tokens=stats.tokens,
            train_loss=stats.mean_loss,
            base_eval_loss=base_eval,
            train_seconds=seconds,
            signature=self._sign(info.digest, task.round),
            codec=self.spec.codec,
        )
        return PendingUpdate(update=update, path=str(self.state.pending_path(task.round)))

    def _sign(self, digest: str, round_: int) -> bytes:
        s = self.cfg.silo
        if s.insecure or s.certs_dir is None:
            return b""
        return sign_digest(TLSFiles.for_silo(s.certs_dir, s.name).key, digest, round_)

    def _feedback(self) -> ErrorFeedback | None:
        """Error feedback for lossy codecs, restored from the last committed round."""
        if not is_lossy(self.spec.codec):
            return None
        feedback = ErrorFeedback()
        previous = self.state.trainer_dir
        if previous is not None and (previous / FEEDBACK_FILE).exists():
            feedback.load_state_dict(load_file(str(previous / FEEDBACK_FILE)))
        return feedback

    def _upload(self, pending: PendingUpdate) -> None:
        self.heartbeat.set(round_=pending.update.round, phase="upload")
        bar = Progress("upload", pending.update.size, "B")
        try:
            outcome = upload(
                self.client,
                pending,
                chunk_bytes=self.cfg.transfer.chunk_bytes,
                limiter=self.up_limit,
                on_chunk=self._counter(bar, "up"),
            )
        finally:
            bar.close()
        self.metrics.rounds.labels(outcome.value).inc()
        log.info(
            "upload_finished",
            round=pending.update.round,
            outcome=outcome.value,
            bytes=pending.update.size,
        )
        if outcome is UploadOutcome.REJECTED:
            log.error(
                "update_refused",
                round=pending.update.round,
                detail="the aggregator refused this update; this round is skipped",
            )
        self.state.clear_pending()

    # -- global model and evaluation ------------------------------------------------------
    def _global(self, version: int) -> dict[str, torch.Tensor]:
        held = self.state.load_global()
        if held is not None and held[0] == version:
            return held[1]
        self.heartbeat.set(phase="download")
        base = held if held is not None and held[0] == version - 1 else None
        bar = Progress("download", 0, "B")
        try:
            params = download(
                self.client,
                version,
                self.state.root / "downloads",
                base=base,
                limiter=self.down_limit,
                on_chunk=self._counter(bar, "down"),
                shapes={k: tuple(v.shape) for k, v in self.model.state_dict().items()},
            )
        finally:
            bar.close()
        self.state.save_global(version, params)
        log.info("global_downloaded", version=version, delta=base is not None)
        return params

    def _evaluate(self, params: Mapping[str, torch.Tensor]) -> float:
        """The eval loss of `params`. A model without weights of its own borrows `params` (its
        parameters share their storage) and gives them back after: the caller may then turn
        them into the delta in place without the model seeing it."""
        owns = self.backend.model_owns_weights
        self.model.load_state_dict(dict(params), assign=not owns)
        loader = eval_batches(
            self.shards,
            seq_len=self.tcfg.seq_len,
            batch_size=self.tcfg.batch_size,
            max_batches=self.spec.eval_batches,
        )
        try:
            return evaluate_loss(self.model, loader)[0]
        except DataError as exc:
            log.warning("eval_skipped", reason=str(exc))
            return math.nan
        finally:
            if not owns:
                self._give_back_weights()

    def _give_back_weights(self) -> None:
        """Point the borrowing model's parameters back at the meta device (no storage)."""
        state = self.model.state_dict()
        empty = {k: torch.empty_like(v, device="meta") for k, v in state.items()}
        self.model.load_state_dict(empty, assign=True)

    def _final_eval(self, task: pb.Task) -> None:
        params = self._global(task.base_version)
        loss = self._evaluate(params)
        tokens = self.spec.eval_batches * self.tcfg.batch_size * self.tcfg.seq_len
        if math.isnan(loss):
            loss, tokens = 0.0, 0
        self.client.report_eval(task.base_version, loss, tokens)
        log.info("final_eval", version=task.base_version, eval_loss=round(loss, 4))


def _bucket(rate: str) -> TokenBucket | None:
    value = parse_rate(rate)
    return None if value is None else TokenBucket(value)
