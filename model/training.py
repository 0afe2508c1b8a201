"""Training: a speech-LLM trained on the sequences of one published dataset version.

    dataset version -> sequence pools (jstip.model.sequence_pools) -> BucketSampler batches -> SpeechLLM
        -> checkpoints under <store>/models/<model_id>/checkpoints/, the final model in .../final/,
           a loss log (train_log.csv), and a row in the catalog's `models` table

The model id hashes the dataset version, the training config, the model it starts from and the training
code, so the same inputs name the same model: a rerun resumes from the last checkpoint of that id (or
returns the finished model), and a model can always be traced back to the data that made it.

Resuming is exact: batch `step` is a pure function of (seed, step), each step reseeds torch's RNG (dropout)
from (seed, step), and a checkpoint holds the trainable weights, the optimizer and the LR schedule; so a
run killed at step k and resumed reaches the same weights as one that never stopped.

Device: `device: auto` trains on CUDA when available, in bf16 autocast (weights and optimizer in fp32),
else on CPU in fp32; the same flow runs unchanged on either.

Several processes: started by torchrun (`jstip train --nproc-per-node N`, or torchrun by hand), `train`
runs as one rank of a DDP or FSDP2 job (jstip.model.distributed): each rank trains on its share of every
global batch, rank 0 alone writes checkpoints, the log, the final model and the catalog, and the result
does not depend on the number of processes beyond floating-point order. Batches are made by DataLoader
workers (jstip.model.loader); checkpoints and the loss log are jstip.model.checkpoints'.

Over 400 lines because the run is one piece: the plan (model id, lock, what to start from), the step loop
and its resume logic share their state, and split apart they would only pass it back and forth.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from jstip.model import distributed
from jstip.model.checkpoints import (CHECKPOINTS, LOG_FIELDS, TRAIN_LOG, gather_state, list_checkpoints, load_state,
                                     log_rows, save_checkpoint, trim_log)
from jstip.model.config import TrainConfig
from jstip.model.device import pick_device
from jstip.model.distributed import DistributedContext
from jstip.model.loader import RankBatches, batch_loader
from jstip.model.sequence_pools import BucketSampler, SequencePools, build_sequences, resolve_version
from jstip.model.speech_llm import (LLM_DIR, MODEL_FILE, Batch, SpeechLLM, build_speech_llm, load_speech_llm,
                                    save_speech_llm)
from jstip.model.tiny_lm import build_tiny_lm
from jstip.schemas.sequences import TrainingSequence
from jstip.storage.store import DatasetStore
from jstip.version import model_code_version

if TYPE_CHECKING:
    from jstip.storage.registry import ModelRegistry, ModelRecord

log = logging.getLogger(__name__)

FINAL = "final"


@dataclass(frozen=True)
class TrainResult:
    model_id: str
    model_dir: Path  # the final model (load with jstip.model.speech_llm.load_speech_llm)
    dataset_version: str
    steps: int
    metrics: dict
    resumed_from_step: int | None  # None: started from scratch (or the model was already finished)

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "model_dir": str(self.model_dir)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainResult":
        fields = json.loads(text)
        return cls(**{**fields, "model_dir": Path(fields["model_dir"])})


def model_id_for(dataset_version: str, config: TrainConfig, init_model: str | None) -> str:
    parts = (dataset_version, config.canonical_json(), init_model or "", model_code_version())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _step_seed(seed: int, step: int, rank: int = 0) -> int:
    parts = distributed.step_seed_parts(seed, step, rank)
    return int.from_bytes(hashlib.sha256(parts.encode()).digest()[:8], "little") & (2**63 - 1)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak learning rate at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def forward_backward(model: torch.nn.Module, batch: Batch, device: torch.device, num_label_tokens: int,
                     num_speech_spans: int, world_size: int = 1) -> dict[str, torch.Tensor]:
    """One forward + backward pass (gradients accumulate in the model). The counts are the global batch's
    (jstip.model.distributed); the loss is scaled by world_size because DDP and FSDP average gradients
    over the ranks, and the gradient wanted is the global batch's, i.e. their sum."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        losses = model(batch, num_label_tokens=num_label_tokens, num_speech_spans=num_speech_spans)
    (losses["loss"] * world_size if world_size > 1 else losses["loss"]).backward()
    return losses


def loss_and_backward(model: SpeechLLM, sequences: list[TrainingSequence], device: torch.device) -> dict[str, float]:
    """One forward + backward pass over a batch of sequences on one process (gradients accumulate)."""
    batch = model.batch_layout()(sequences)
    losses = forward_backward(model, batch.to(device), device, batch.num_label_tokens, len(batch.speech))
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["label_tokens"] = batch.num_label_tokens
    out["speech_seconds"] = sum(w.numel() for w in batch.speech) / 16000
    return out


def resolve_base_llm(registry: ModelRegistry, config: TrainConfig) -> tuple[TrainConfig, ModelRecord | None]:
    """`model.llm.path` may name a registered LM prior (jstip.model.pretraining) by model id or unique
    prefix: then -> (the config with the full id, the prior's record). A hub id or an existing directory
    -> (config, None)."""
    from jstip.storage.store import RegistryError

    path = config.model.llm.path
    if path is None or Path(path).exists():
        return config, None
    try:
        record = registry.model(path)
    except RegistryError:
        return config, None  # not a model of this store: a hub id, loaded by transformers
    if not (record.path / "config.json").is_file():
        raise ValueError(f"model.llm.path {path!r} is registered model {record.model_id}, which is not a causal "
                         f"LM (no config.json in {record.path}); point it at an LM prior (`jstip pretrain-lm`), a "
                         "hub id or a local transformers directory")
    model = config.model.model_copy(update={"llm": config.model.llm.model_copy(update={"path": record.model_id})})
    return config.model_copy(update={"model": model}), record


def _initial_model(config: TrainConfig, pools: SequencePools, model_dir: Path,
                   init_model_dir: Path | None, prior_dir: Path | None = None) -> tuple[SpeechLLM, str]:
    """The model to start from and where its base LLM lives (for saving)."""
    if init_model_dir is not None:
        meta = json.loads((init_model_dir / MODEL_FILE).read_text())
        if meta["config"] != config.model.model_dump(mode="json"):
            raise ValueError(f"cannot continue training the model in {init_model_dir}: its model config differs "
                             "from this training config's `model` section (continue with the same architecture, "
                             "or train from scratch)")
        if meta["llm_source"] == LLM_DIR and not (model_dir / LLM_DIR).exists():
            shutil.copytree(init_model_dir / LLM_DIR, model_dir / LLM_DIR)
        return load_speech_llm(init_model_dir), meta["llm_source"]
    llm_dir = model_dir / LLM_DIR
    if prior_dir is not None:
        # a registered LM prior is small: copied into the model, so the model does not depend on the
        # prior's directory staying where it is
        if not (llm_dir / "config.json").exists():
            tmp = model_dir / f".{LLM_DIR}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(prior_dir, tmp)
            tmp.rename(llm_dir)
        return build_speech_llm(config.model, llm_dir, seed=config.seed), LLM_DIR
    if config.model.llm.path:
        return build_speech_llm(config.model, config.model.llm.path, seed=config.seed), config.model.llm.path
    if not (llm_dir / "config.json").exists():
        tmp = model_dir / f".{LLM_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_lm(tmp, pools.texts, config.model.llm.tiny, seed=config.seed)
        tmp.rename(llm_dir)
    return build_speech_llm(config.model, llm_dir, seed=config.seed), LLM_DIR


def _silent(message: str) -> None:
    pass


def train(
    store: str | Path,
    dataset_version: str | None = None,
    config: TrainConfig | None = None,
    *,
    init_model: str | None = None,
    name: str = "jstip",
    stop_after: int | None = None,
    on_log: Callable[[str], None] | None = None,
    allow_test_set: bool = False,
) -> TrainResult:
    """Train (or resume training) a speech-LLM on a dataset version and register it in the catalog.

    dataset_version: id, unique prefix or dataset name; None: the newest training version. A held-out version
    (dev, test) is refused unless `allow_test_set`. init_model: a registered model id to
    continue from (the nightly loop's "from the promoted model"); None: from scratch. name: the model
    family name in the catalog. stop_after: stop (with a checkpoint) after this many steps in total, for a
    time-boxed run to be resumed later; the model is registered only when all `config.steps` are done.

    One run per model at a time: training holds the model's lock (DatasetStore.model_lock), and a second run
    of the same model stops at once naming the holder. Under torchrun every rank calls this with the same
    arguments and gets the same result (jstip.model.distributed); rank 0 alone decides (version, roles,
    integrity, model id), holds the lock, writes and logs through `on_log`; the other ranks are told.
    """
    config = config or TrainConfig()
    ctx = distributed.init_from_env(pick_device(config.device).type, config.distributed.timeout_minutes)
    try:
        with contextlib.ExitStack() as held:  # rank 0's lock on the model, for the whole run
            return _train(ctx, Path(store), dataset_version, config, init_model, name, stop_after,
                          (on_log or log.info) if ctx.is_main else _silent, allow_test_set, held)
    finally:
        distributed.shutdown(ctx)


@dataclass
class _Plan:
    """What rank 0 decides before training, and tells the other ranks."""

    version_id: str
    missing_audio: tuple[int, ...]
    config_json: str
    model_id: str
    parent_id: str | None  # lineage: the model this one continues, else the LM prior it was built on
    init_dir: str | None
    prior_dir: str | None
    finished: TrainResult | None = None


def _plan(store: DatasetStore, dataset_version: str | None, config: TrainConfig, init_model: str | None,
          name: str, say: Callable[[str], None], allow_test_set: bool,
          held: contextlib.ExitStack) -> tuple[_Plan, SequencePools]:
    """Rank 0's decisions; enters the model's lock into `held` (kept until the run ends)."""
    from jstip.storage.registry import ModelRegistry

    registry = ModelRegistry(store)
    # never a held-out version unasked; the files are those that were published (tamper evidence), or
    # training stops naming the one that differs
    chosen = store.training_version(dataset_version, allow_held_out=allow_test_set)
    dataset_version = store.ensure_intact(resolve_version(store, chosen.version_id).version_id,
                                          purpose="training").version_id
    pools = build_sequences(store, dataset_version, config.mix, config.asr_prompt, config.on_missing_audio)
    if config.epochs is not None:
        sequences = sum(n for pool, n in pools.counts().items() if getattr(config.mix, pool) > 0)
        config = config.model_copy(update={"steps": max(1, math.ceil(config.epochs * sequences / config.batch_size))})
    parent = registry.model(init_model) if init_model else None  # resolves a prefix; clear error if unknown
    config, prior = resolve_base_llm(registry, config)
    model_id = model_id_for(pools.version_id, config, parent.model_id if parent else None)
    plan = _Plan(pools.version_id, pools.missing_audio, config.model_dump_json(), model_id,
                 parent.model_id if parent else prior.model_id if prior else None,
                 str(parent.path) if parent else None, str(prior.path) if prior else None)
    # one run per model at a time: a second run of the same model stops here, naming the one that holds it
    held.enter_context(store.model_lock(model_id, purpose=f"train model {model_id} on dataset version "
                                                          f"{pools.version_id}"))
    final_dir = store.root / "models" / model_id / FINAL
    if (final_dir / MODEL_FILE).exists():
        record = registry.register_model(model_id=model_id, name=name, dataset_version=pools.version_id,
                                         config_json=config.canonical_json(),
                                         metrics=json.loads((final_dir / "metrics.json").read_text()),
                                         path=final_dir, parent_model=plan.parent_id)
        say(f"model {model_id} is already trained on {pools.version_id}: {final_dir}")
        plan.finished = TrainResult(model_id, final_dir, pools.version_id, config.steps, record.metrics, None)
    return plan, pools


def _train(ctx: DistributedContext, store: Path, dataset_version: str | None, config: TrainConfig,
           init_model: str | None, name: str, stop_after: int | None, say: Callable[[str], None],
           allow_test_set: bool, held: contextlib.ExitStack) -> TrainResult:
    data_store = DatasetStore(store)
    # Rank 0 reads the catalog, builds the sequence index, checks the audio files and prepares the model's
    # LLM; the others wait, are told what it found, and open the same index.
    if ctx.is_main:
        try:
            plan, pools = _plan(data_store, dataset_version, config, init_model, name, say, allow_test_set, held)
        except Exception as e:
            ctx.broadcast(f"{type(e).__name__}: {e}")
            raise
        ctx.broadcast(plan)
    else:
        plan = ctx.broadcast()
        if isinstance(plan, str):
            raise distributed.DistributedTrainingError(f"rank 0 failed before training: {plan}")
        pools = build_sequences(data_store, plan.version_id, config.mix, config.asr_prompt, config.on_missing_audio,
                                missing_audio=plan.missing_audio)
    if plan.finished is not None:
        return plan.finished
    config = TrainConfig.model_validate_json(plan.config_json)
    model_id = plan.model_id
    model_dir = data_store.root / "models" / model_id
    final_dir = model_dir / FINAL
    device = pick_device(config.device, ctx.local_rank)
    processes = f", {ctx.world_size} processes ({config.distributed.sharding})" if ctx.world_size > 1 else ""
    say(f"training model {model_id} on dataset version {pools.version_id} ({device}{processes}); sequences per "
        f"pool: {pools.counts()}" + (f"; left out: {pools.skipped}" if pools.skipped else ""))

    init_dir = Path(plan.init_dir) if plan.init_dir else None
    prior_dir = Path(plan.prior_dir) if plan.prior_dir else None
    if ctx.is_main:  # writes the LLM directory when the model has its own (tiny LM, copied prior)
        model_dir.mkdir(parents=True, exist_ok=True)
        model, llm_source = _initial_model(config, pools, model_dir, init_dir, prior_dir)
        ctx.barrier()
    else:
        ctx.barrier()
        model, llm_source = _initial_model(config, pools, model_dir, init_dir, prior_dir)
    model.to(device)
    layout = model.batch_layout()
    trained = distributed.wrap_model(model, ctx, device, config.distributed.sharding)
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))

    start_step, resumed_from = 0, None
    checkpoints = list_checkpoints(model_dir) if ctx.is_main else []
    checkpoint = ctx.broadcast(checkpoints[-1].name if checkpoints else None)
    if checkpoint is not None:
        last = model_dir / CHECKPOINTS / checkpoint
        load_state(trained, optimizer, last, device, ctx)
        scheduler.load_state_dict(torch.load(last / "optimizer.pt", map_location="cpu", weights_only=True)["scheduler"])
        start_step = resumed_from = json.loads((last / "state.json").read_text())["step"]
        say(f"resuming {model_id} from {last.name}")
    log_path = model_dir / TRAIN_LOG
    if ctx.is_main:
        trim_log(log_path, start_step)

    sampler = BucketSampler(pools.pools, config.mix.model_dump(), config.batch_size, config.length_buckets,
                            config.seed)
    end_step = min(config.steps, stop_after) if stop_after is not None else config.steps
    loader = batch_loader(RankBatches(sampler, layout, ctx.rank, ctx.world_size), start_step, end_step,
                          config.loader.workers, config.loader.prefetch, pin_memory=device.type == "cuda")
    trained.train()
    started = time.perf_counter()
    sequences_seen = 0
    has_ctc = model.ctc_head is not None
    with contextlib.ExitStack() as stack:
        writer = log_file = None
        if ctx.is_main:
            new_log = not log_path.exists()
            log_file = stack.enter_context(log_path.open("a", newline=""))
            writer = csv.DictWriter(log_file, fieldnames=LOG_FIELDS)
            if new_log:
                writer.writeheader()
        batches = iter(loader)
        for step in range(start_step, end_step):
            waiting = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - waiting
            torch.manual_seed(_step_seed(config.seed, step, ctx.rank))
            label_tokens, speech_spans = ctx.sum([batch.num_label_tokens, len(batch.speech)], torch.int64)
            losses = forward_backward(trained, batch.to(device), device, int(label_tokens), int(speech_spans),
                                      ctx.world_size)
            ctc = losses.get("ctc_loss")
            loss, llm_loss, ctc_loss, sequences, tokens, speech_samples = ctx.sum([
                float(losses["loss"].detach()), float(losses["llm_loss"].detach()),
                float(ctc.detach()) if ctc is not None else 0.0, len(batch.sequence_ids), batch.num_label_tokens,
                sum(w.numel() for w in batch.speech)])
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sequences_seen += int(sequences)
            done = step + 1
            if writer is not None:
                writer.writerow({"step": done, "loss": round(loss, 6), "llm_loss": round(llm_loss, 6),
                                 "ctc_loss": round(ctc_loss, 6) if has_ctc and speech_spans > 0 else float("nan"),
                                 "learning_rate": f"{scheduler.get_last_lr()[0]:.6g}", "sequences": int(sequences),
                                 "label_tokens": int(tokens), "speech_seconds": round(speech_samples / 16000, 3),
                                 "elapsed_s": round(time.perf_counter() - started, 3),
                                 "data_wait_s": round(waited, 4)})
            if done % config.log_every == 0 or done == end_step:
                if log_file is not None:
                    log_file.flush()
                say(f"step {done}/{config.steps} loss {loss:.4f} lr {scheduler.get_last_lr()[0]:.2e}")
            if done % config.checkpoint_every == 0 or done == end_step:
                state = gather_state(trained, optimizer, ctx)
                if ctx.is_main:
                    save_checkpoint(state, scheduler, done, model_dir, config.keep_checkpoints)
        del batches
    elapsed = time.perf_counter() - started
    if end_step < config.steps:
        say(f"stopped after step {end_step} of {config.steps}; rerun to resume from the checkpoint")
        return TrainResult(model_id, model_dir / CHECKPOINTS, pools.version_id, end_step, {}, resumed_from)

    state = gather_state(trained, optimizer, ctx)
    result = None
    if ctx.is_main:
        from jstip.storage.registry import ModelRegistry

        metrics = _metrics(log_path, pools, elapsed, sequences_seen, device, ctx, config)
        tmp = model_dir / f".{FINAL}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_speech_llm(model, tmp, llm_source, weights=state[0],
                        extra={"model_id": model_id, "dataset_version": pools.version_id, "steps": config.steps})
        if llm_source == LLM_DIR:
            shutil.copytree(model_dir / LLM_DIR, tmp / LLM_DIR)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        (tmp / "train_config.json").write_text(config.model_dump_json(indent=2))
        tmp.rename(final_dir)
        record = ModelRegistry(data_store).register_model(
            model_id=model_id, name=name, dataset_version=pools.version_id, config_json=config.canonical_json(),
            metrics=metrics, path=final_dir, parent_model=plan.parent_id)
        say(f"model {model_id} trained: final loss {metrics['final_loss']:.4f}; {final_dir}")
        result = TrainResult(record.model_id, final_dir, pools.version_id, config.steps, metrics, resumed_from)
    return ctx.broadcast(result)


def _metrics(log_path: Path, pools: SequencePools, elapsed: float, sequences_seen: int, device: torch.device,
             ctx: DistributedContext, config: TrainConfig) -> dict:
    losses = [float(r["loss"]) for r in log_rows(log_path)]
    window = max(1, min(10, len(losses) // 4 or 1))
    return {
        "first_loss": sum(losses[:window]) / window,
        "final_loss": sum(losses[-window:]) / window,
        "steps_logged": len(losses),
        "sequences_per_pool": pools.counts(),
        "sequences_left_out": pools.skipped,
        # of this session only (a resumed run measures its own steps)
        "train_seconds": round(elapsed, 3),
        "sequences_per_second": round(sequences_seen / elapsed, 3) if elapsed > 0 else None,
        "device": str(device),
        "processes": ctx.world_size,
        "sharding": config.distributed.sharding if ctx.world_size > 1 else None,
    }


def launch_training(store: str | Path, dataset_version: str, launch: distributed.LaunchSpec, *,
                    config_path: str | Path | None = None, steps: int | None = None, init_model: str | None = None,
                    name: str = "jstip", base_llm: str | None = None, allow_test_set: bool = False,
                    on_line: Callable[[str], None] = print) -> TrainResult:
    """Run `train` as a distributed job under torchrun (`launch`) and wait for it: the workers run
    `jstip train` with these arguments (the entry point a user runs under torchrun by hand), and each
    machine's local rank 0 writes the result, read back here. A failed job raises DistributedTrainingError;
    running this again resumes from the job's last checkpoint."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="jstip-train-") as tmp:
        result_file = Path(tmp) / "result.json"
        args = ["train", "--store", str(Path(store).resolve()), "--version", dataset_version, "--name", name,
                "--result-file", str(result_file)]
        if config_path is not None:
            args += ["--config", str(Path(config_path).resolve())]
        if steps is not None:
            args += ["--steps", str(steps)]
        if init_model is not None:
            args += ["--init-model", init_model]
        if base_llm is not None:
            args += ["--base-llm", base_llm]
        if allow_test_set:
            args.append("--allow-test-set")
        distributed.run_launcher(distributed.launch_command(launch, args), on_line)
        if not result_file.is_file():
            raise distributed.DistributedTrainingError(f"torchrun finished but wrote no result ({result_file})")
        return TrainResult.from_json(result_file.read_text())

