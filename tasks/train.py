"""Training: a speech-LLM trained on the sequences of one published dataset version.

    dataset version -> sequence pools (jstip.tasks.sequences) -> BucketSampler batches -> SpeechLLM
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
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from jstip.model.batching import collate, lay_out
from jstip.model.config import TrainConfig
from jstip.model.speech_llm import (LLM_DIR, MODEL_FILE, SpeechLLM, build_speech_llm, load_speech_llm,
                                    save_speech_llm, trainable_state)
from jstip.model.tiny_lm import build_tiny_lm
from jstip.schemas.sequences import TrainingSequence
from jstip.storage.store import DatasetStore
from jstip.tasks.sequences import BucketSampler, SequencePools, build_sequences, resolve_version
from jstip.version import model_code_version

if TYPE_CHECKING:
    from jstip.storage.registry import ModelRegistry, ModelRecord

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
FINAL = "final"
TRAIN_LOG = "train_log.csv"
LOG_FIELDS = ("step", "loss", "llm_loss", "ctc_loss", "learning_rate", "sequences", "label_tokens",
              "speech_seconds", "elapsed_s")


@dataclass(frozen=True)
class TrainResult:
    model_id: str
    model_dir: Path  # the final model (load with jstip.model.speech_llm.load_speech_llm)
    dataset_version: str
    steps: int
    metrics: dict
    resumed_from_step: int | None  # None: started from scratch (or the model was already finished)


def model_id_for(dataset_version: str, config: TrainConfig, init_model: str | None) -> str:
    parts = (dataset_version, config.canonical_json(), init_model or "", model_code_version())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device (torch {torch.__version__})")
    return device


def _step_seed(seed: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{step}".encode()).digest()[:8], "little") & (2**63 - 1)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak learning rate at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def loss_and_backward(model: SpeechLLM, sequences: list[TrainingSequence], device: torch.device) -> dict[str, float]:
    """One forward + backward pass over a batch of sequences (gradients accumulate in the model)."""
    layouts = [lay_out(s, model.tokenizer, model.embeddings_for_samples, ctc_targets=model.ctc_targets)
               for s in sequences]
    batch = collate(layouts, model.tokenizer).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        losses = model(batch)
    losses["loss"].backward()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["label_tokens"] = batch.num_label_tokens
    out["speech_seconds"] = sum(w.numel() for w in batch.speech) / 16000
    return out


def resolve_base_llm(registry: ModelRegistry, config: TrainConfig) -> tuple[TrainConfig, ModelRecord | None]:
    """`model.llm.path` may name a registered LM prior (jstip.tasks.pretrain_lm) by model id or unique
    prefix: then -> (the config with the full id, the prior's record). A hub id or an existing directory
    -> (config, None)."""
    from jstip.storage.registry import RegistryError

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


def _checkpoints(model_dir: Path) -> list[Path]:
    return sorted((model_dir / CHECKPOINTS).glob("step-*"))


def _save_checkpoint(model: SpeechLLM, optimizer, scheduler, step: int, model_dir: Path, keep: int) -> Path:
    final = model_dir / CHECKPOINTS / f"step-{step:07d}"
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(trainable_state(model), tmp / "weights.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    tmp.rename(final)  # a checkpoint directory is complete or absent
    for old in _checkpoints(model_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _trim_log(path: Path, steps_done: int) -> None:
    """Keep the log rows of steps up to the checkpoint being resumed (later ones will be run again), and only
    whole rows: a run killed mid-write may have left a partial last line. Rewritten to a temporary file and
    renamed, so a kill here leaves the old log or the new one, never a torn one."""
    if not path.exists():
        return
    rows = _log_rows(path)
    kept = [r for r in rows if int(r["step"]) <= steps_done]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)


def _log_rows(path: Path) -> list[dict]:
    """The log's complete rows, in step order: a row with a missing field or an unreadable step (a line cut
    short by a kill, a stray header) is left out rather than failing the next run."""
    rows: dict[int, dict] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if None in row.values() or None in row or not (row.get("step") or "").isdigit():
                continue
            rows[int(row["step"])] = row
    return [rows[step] for step in sorted(rows)]


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
    """
    from jstip.storage.registry import ModelRegistry

    say = on_log or log.info
    config = config or TrainConfig()
    data_store = DatasetStore(store)
    registry = ModelRegistry(data_store)
    # the files are those that were published (tamper evidence), or training stops naming the one that differs
    chosen = data_store.training_version(dataset_version, allow_held_out=allow_test_set)  # never a test set unasked
    dataset_version = data_store.ensure_intact(resolve_version(data_store, chosen.version_id).version_id,
                                               purpose="training").version_id
    pools = build_sequences(data_store, dataset_version, config.mix, config.asr_prompt, config.on_missing_audio)
    if config.epochs is not None:
        sequences = sum(n for pool, n in pools.counts().items() if getattr(config.mix, pool) > 0)
        config = config.model_copy(update={"steps": max(1, math.ceil(config.epochs * sequences / config.batch_size))})
    parent = registry.model(init_model) if init_model else None  # resolves a prefix; clear error if unknown
    config, prior = resolve_base_llm(registry, config)
    init_dir = parent.path if parent else None
    model_id = model_id_for(pools.version_id, config, parent.model_id if parent else None)
    # lineage: the model this one continues, else the LM prior it was built on
    parent_id = parent.model_id if parent else prior.model_id if prior else None
    prior_dir = prior.path if prior else None
    # one run per model at a time: a second run of the same model stops here, naming the one that holds it
    with data_store.model_lock(model_id, purpose=f"train model {model_id} on dataset version {pools.version_id}"):
        return _train_model(data_store, registry, pools, config, model_id, parent_id, init_dir, prior_dir, name,
                            stop_after, say)


def _train_model(data_store: DatasetStore, registry, pools: SequencePools, config: TrainConfig, model_id: str,
                 parent_id: str | None, init_dir: Path | None, prior_dir: Path | None, name: str,
                 stop_after: int | None, say: Callable[[str], None]) -> TrainResult:
    model_dir = data_store.root / "models" / model_id
    final_dir = model_dir / FINAL

    if (final_dir / MODEL_FILE).exists():
        record = registry.register_model(model_id=model_id, name=name, dataset_version=pools.version_id,
                                         config_json=config.canonical_json(),
                                         metrics=json.loads((final_dir / "metrics.json").read_text()),
                                         path=final_dir, parent_model=parent_id)
        say(f"model {model_id} is already trained on {pools.version_id}: {final_dir}")
        return TrainResult(model_id, final_dir, pools.version_id, config.steps, record.metrics, None)

    device = pick_device(config.device)
    say(f"training model {model_id} on dataset version {pools.version_id} ({device}); sequences per pool: "
        f"{pools.counts()}" + (f"; left out: {pools.skipped}" if pools.skipped else ""))
    model_dir.mkdir(parents=True, exist_ok=True)
    model, llm_source = _initial_model(config, pools, model_dir, init_dir, prior_dir)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))

    start_step, resumed_from = 0, None
    checkpoints = _checkpoints(model_dir)
    if checkpoints:
        last = checkpoints[-1]
        model.load_state_dict(torch.load(last / "weights.pt", map_location=device, weights_only=True), strict=False)
        opt_state = torch.load(last / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
        start_step = resumed_from = json.loads((last / "state.json").read_text())["step"]
        say(f"resuming {model_id} from {last.name}")
    log_path = model_dir / TRAIN_LOG
    _trim_log(log_path, start_step)

    sampler = BucketSampler(pools.pools, config.mix.model_dump(), config.batch_size, config.length_buckets,
                            config.seed)
    end_step = min(config.steps, stop_after) if stop_after is not None else config.steps
    new_log = not log_path.exists()
    model.train()
    started = time.perf_counter()
    sequences_seen = 0
    with log_path.open("a", newline="") as log_file:
        writer = csv.DictWriter(log_file, fieldnames=LOG_FIELDS)
        if new_log:
            writer.writeheader()
        for step in range(start_step, end_step):
            torch.manual_seed(_step_seed(config.seed, step))
            sequences = sampler.batch(step)
            losses = loss_and_backward(model, sequences, device)
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sequences_seen += len(sequences)
            done = step + 1
            writer.writerow({"step": done, "loss": round(losses["loss"], 6), "llm_loss": round(losses["llm_loss"], 6),
                             "ctc_loss": round(losses.get("ctc_loss", float("nan")), 6),
                             "learning_rate": f"{scheduler.get_last_lr()[0]:.6g}", "sequences": len(sequences),
                             "label_tokens": losses["label_tokens"],
                             "speech_seconds": round(losses["speech_seconds"], 3),
                             "elapsed_s": round(time.perf_counter() - started, 3)})
            if done % config.log_every == 0 or done == end_step:
                log_file.flush()
                say(f"step {done}/{config.steps} loss {losses['loss']:.4f} lr {scheduler.get_last_lr()[0]:.2e}")
            if done % config.checkpoint_every == 0 or done == end_step:
                _save_checkpoint(model, optimizer, scheduler, done, model_dir, config.keep_checkpoints)
    elapsed = time.perf_counter() - started
    if end_step < config.steps:
        say(f"stopped after step {end_step} of {config.steps}; rerun to resume from the checkpoint")
        return TrainResult(model_id, model_dir / CHECKPOINTS, pools.version_id, end_step, {}, resumed_from)

    metrics = _metrics(log_path, pools, elapsed, sequences_seen, device)
    tmp = model_dir / f".{FINAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_speech_llm(model, tmp, llm_source,
                    extra={"model_id": model_id, "dataset_version": pools.version_id, "steps": config.steps})
    if llm_source == LLM_DIR:
        shutil.copytree(model_dir / LLM_DIR, tmp / LLM_DIR)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (tmp / "train_config.json").write_text(config.model_dump_json(indent=2))
    tmp.rename(final_dir)
    record = registry.register_model(model_id=model_id, name=name, dataset_version=pools.version_id,
                                     config_json=config.canonical_json(), metrics=metrics, path=final_dir,
                                     parent_model=parent_id)
    say(f"model {model_id} trained: final loss {metrics['final_loss']:.4f}; {final_dir}")
    return TrainResult(record.model_id, final_dir, pools.version_id, config.steps, metrics, resumed_from)


def _metrics(log_path: Path, pools: SequencePools, elapsed: float, sequences_seen: int, device: torch.device) -> dict:
    losses = [float(r["loss"]) for r in _log_rows(log_path)]
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
    }
