"""Text pretraining of the LLM prior: what a speech-LLM starts from when no pretrained LLM can be
downloaded (JSTIP's mechanism is the LLM's textual prior; a tiny LM trained only on a version's few
hundred transcripts has none).

    domain text of a dataset version (its text_corpus and/or accepted transcripts)
    + general English sampled offline from the pocketsphinx trigram LM (jstip.model.general_text)
      -> byte-level BPE tokenizer + tiny Llama-style LM (jstip.model.tiny_lm), causal LM loss on every token
      -> <store>/models/<model_id>/final/: a transformers directory (AutoModelForCausalLM + AutoTokenizer),
         with metrics.json, pretrain_config.json, pretrain_log.csv and the general sentences it saw
      -> a row in the catalog's `models` table (name `lm-prior` by default; dataset_version = the version
         whose domain text it read; config_json = this config plus the sha256 of the n-gram LM file)

A speech-LLM starts from it by `model.llm.path: <model id>` (or the directory) in its training config,
exactly as it would start from a hub checkpoint (jstip.model.training).

The model id hashes the dataset version, the config, the n-gram LM file and the model code, so the same
inputs name the same prior: a rerun returns the finished one. The final directory is written beside its
place and renamed in, so it is complete or absent. Batch `step` depends only on (seed, step).
"""

from __future__ import annotations

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

import numpy as np
import torch

from jstip.model.config import PretrainConfig
from jstip.model.speech_llm import IGNORE_INDEX
from jstip.model.tiny_lm import build_tiny_lm
from jstip.storage.store import DatasetStore
from jstip.model.general_text import pocketsphinx_lm_path, sample_sentences
from jstip.model.sequence_pools import resolve_version
from jstip.version import model_code_version

log = logging.getLogger(__name__)

PRIOR_KIND = "lm_prior"  # config_json["kind"] of a registered LM prior
FINAL = "final"
GENERAL_TEXT_FILE = "general_text.txt"
LOG_FIELDS = ("step", "loss", "learning_rate", "tokens", "elapsed_s")


@dataclass(frozen=True)
class PretrainResult:
    model_id: str
    model_dir: Path  # a transformers directory: AutoModelForCausalLM.from_pretrained(model_dir)
    dataset_version: str
    metrics: dict


def domain_sentences(store: DatasetStore, version_id: str, which: str) -> list[str]:
    """The domain text of a version: its text_corpus sentences, its accepted transcripts, or both;
    distinct, in sorted order (so the result depends on the version only)."""
    tables = {"text_corpus": ["text_corpus"], "transcripts": ["utterances"],
              "both": ["text_corpus", "utterances"]}[which]
    texts: set[str] = set()
    for table in tables:
        texts.update(t for t in store.read_table(version_id, table).column("text").to_pylist() if t and t.strip())
    return sorted(texts)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prior_config_json(config: PretrainConfig, ngram_lm_sha256: str) -> str:
    """What the catalog records as the prior's config: the pretraining config, its kind and the exact
    n-gram LM file the general English came from."""
    data = {"kind": PRIOR_KIND, **config.model_dump(mode="json"),
            "general_text_source": {"ngram_lm": "pocketsphinx/model/en-us/en-us.lm.bin",
                                    "sha256": ngram_lm_sha256}}
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak at the last step (as jstip.model.training)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _split(sentences: list[str], share: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, validation) by a seeded permutation; at least one training sentence."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    n_val = min(int(len(sentences) * share), max(0, len(sentences) - 1))
    return [sentences[i] for i in order[n_val:]], [sentences[i] for i in order[:n_val]]


def _encode(tokenizer, sentences: list[str], max_tokens: int) -> list[list[int]]:
    # " " + text, as jstip.model.batching tokenizes every text segment; BOS ... EOS as in a training sequence
    if not sentences:
        return []
    body = tokenizer([" " + s for s in sentences], add_special_tokens=False).input_ids
    return [([tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id])[:max_tokens] for ids in body]


def _batch(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, labels, mask


@torch.no_grad()
def mean_token_loss(model, sequences: list[list[int]], pad: int, batch_size: int = 64) -> float | None:
    """Mean next-token negative log-likelihood (nats) over every predicted token of `sequences`."""
    if not sequences:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        ids, labels, mask = _batch(sequences[start:start + batch_size], pad)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                ignore_index=IGNORE_INDEX, reduction="sum")
        total += float(nll)
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count


def pretrain_lm(
    store: str | Path,
    dataset_version: str | None = None,
    config: PretrainConfig | None = None,
    *,
    name: str = "lm-prior",
    on_log: Callable[[str], None] | None = None,
) -> PretrainResult:
    """Pretrain (or return the already pretrained) LM prior on a version's domain text plus general
    English, and register it in the catalog. dataset_version: id or unique prefix (None: the latest)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jstip.storage.registry import ModelRegistry

    say = on_log or log.info
    config = config or PretrainConfig()
    data_store = DatasetStore(store)
    registry = ModelRegistry(data_store)
    version = resolve_version(data_store, dataset_version)
    ngram_lm = pocketsphinx_lm_path()
    config_json = prior_config_json(config, _file_sha256(ngram_lm))
    model_id = hashlib.sha256("\0".join((version.version_id, config_json, model_code_version())).encode()
                              ).hexdigest()[:16]
    model_dir = data_store.root / "models" / model_id
    final_dir = model_dir / FINAL
    if (final_dir / "metrics.json").exists():
        metrics = json.loads((final_dir / "metrics.json").read_text())
        registry.register_model(model_id=model_id, name=name, dataset_version=version.version_id,
                                config_json=config_json, metrics=metrics, path=final_dir)
        say(f"LM prior {model_id} is already pretrained on {version.version_id}: {final_dir}")
        return PretrainResult(model_id, final_dir, version.version_id, metrics)

    domain = domain_sentences(data_store, version.version_id, config.domain_text)
    if not domain:
        raise ValueError(f"dataset version {version.version_id} has no {config.domain_text.replace('_', ' ')} "
                         "to pretrain on (domain_text: text_corpus needs a build with --text-corpus)")
    started = time.perf_counter()
    general = sample_sentences(config.general_sentences, config.general_seed) if config.general_sentences else []
    say(f"pretraining LM prior {model_id}: {len(domain)} domain sentences of {version.version_id} "
        f"({config.domain_text}), {len(general)} general English sentences sampled from {ngram_lm.name} "
        f"in {time.perf_counter() - started:.0f} s")
    domain_train, domain_val = _split(domain, config.validation_share, config.seed)
    general_train, general_val = _split(general, config.validation_share, config.seed + 1)

    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{FINAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # The tokenizer sees the sources in the proportions the LM will: domain sentences repeated so that
    # they make up `domain_weight` of its input.
    repeat = 1
    if general_train and config.domain_weight > 0:
        repeat = max(1, round(config.domain_weight / max(1e-9, 1 - config.domain_weight)
                              * len(general_train) / len(domain_train)))
    build_tiny_lm(tmp, general_train + domain_train * repeat, config.lm, seed=config.seed)
    tokenizer = AutoTokenizer.from_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    pad = tokenizer.pad_token_id
    sources = {"domain": _encode(tokenizer, domain_train, config.max_tokens),
               "general": _encode(tokenizer, general_train, config.max_tokens)}
    validation = {"domain": _encode(tokenizer, domain_val, config.max_tokens),
                  "general": _encode(tokenizer, general_val, config.max_tokens)}
    weights = np.array([config.domain_weight if sources["domain"] else 0.0,
                        (1 - config.domain_weight) if sources["general"] else 0.0])
    if weights.sum() == 0:
        weights = np.array([1.0, 0.0])
    weights = weights / weights.sum()

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, config.steps))
    model.train()
    losses, tokens_seen = [], 0
    loop_started = time.perf_counter()
    with (tmp / "pretrain_log.csv").open("w", newline="") as log_file:
        writer = csv.DictWriter(log_file, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for step in range(config.steps):
            rng = np.random.default_rng([config.seed, step])
            torch.manual_seed(int(rng.integers(2**31)))
            picks = rng.choice(2, size=config.batch_size, p=weights)
            batch = [sources[("domain", "general")[k]][int(rng.integers(len(sources[("domain", "general")[k]])))]
                     for k in picks]
            ids, labels, mask = _batch(batch, pad)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            tokens_seen += int(mask.sum())
            writer.writerow({"step": step + 1, "loss": round(losses[-1], 6),
                             "learning_rate": f"{scheduler.get_last_lr()[0]:.6g}", "tokens": int(mask.sum()),
                             "elapsed_s": round(time.perf_counter() - loop_started, 3)})
            if (step + 1) % 100 == 0 or step + 1 == config.steps:
                say(f"pretrain step {step + 1}/{config.steps} loss {losses[-1]:.4f}")
    elapsed = time.perf_counter() - loop_started
    window = max(1, min(10, len(losses) // 4 or 1))
    metrics = {
        "first_loss": sum(losses[:window]) / window,
        "final_loss": sum(losses[-window:]) / window,
        "domain_val_loss": mean_token_loss(model, validation["domain"], pad),
        "general_val_loss": mean_token_loss(model, validation["general"], pad),
        "domain_sentences": len(domain), "general_sentences": len(general),
        "vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_seen": tokens_seen, "train_seconds": round(elapsed, 3),
    }
    model.save_pretrained(tmp)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (tmp / "pretrain_config.json").write_text(json.dumps(json.loads(config_json), indent=2, sort_keys=True))
    (tmp / GENERAL_TEXT_FILE).write_text("".join(s + "\n" for s in general), encoding="utf-8")
    tmp.rename(final_dir)
    registry.register_model(model_id=model_id, name=name, dataset_version=version.version_id,
                            config_json=config_json, metrics=metrics, path=final_dir)
    say(f"LM prior {model_id}: loss {metrics['first_loss']:.3f} -> {metrics['final_loss']:.3f}; validation "
        f"loss domain {_fmt(metrics['domain_val_loss'])}, general {_fmt(metrics['general_val_loss'])}; {final_dir}")
    return PretrainResult(model_id, final_dir, version.version_id, metrics)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
