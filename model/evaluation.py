"""Evaluation: decode a test set with a registered model, score it, record the results in the catalog.

    test dataset version (accepted utterances + normalised audio) -> decode (greedy | beam | joint CTC)
        -> jstip.model.metrics.score_hypotheses (WER, entity accuracy, EER, insertions, hallucinations,
           overall and per domain) -> eval_results (catalog) + the hypotheses as Parquet

A test set is a published dataset version built from held-out data (`jstip build` on the test manifest);
its name in `eval_results` defaults to the version's dataset name. Hypotheses go to
`<store>/evals/<model_id>/<dataset_version>/<decoding>.parquet`, one row per utterance with its counts, so
every number in the catalog can be traced to the transcripts behind it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from jstip.model.decode import DecodeOptions, transcribe
from jstip.model.device import pick_device
from jstip.model.speech_llm import load_speech_llm
from jstip.schemas.sequences import AudioSlice
from jstip.storage.registry import ModelRegistry
from jstip.storage.store import DatasetStore
from jstip.model.metrics import ALL_DOMAINS, score_hypotheses, utterance_scores
from jstip.model.sequence_pools import resolve_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalReport:
    model_id: str
    dataset_version: str
    test_set: str
    overall: dict[str, dict[str, float]]  # decoding -> metric -> value (domain "all")
    hypotheses: dict[str, Path]  # decoding -> Parquet of per-utterance hypotheses
    utterances: int
    seconds: dict[str, float]  # decoding -> wall seconds


def decodings_for(model_has_ctc: bool, beam_size: int = 4, ctc_weight: float = 0.3) -> list[DecodeOptions]:
    """With a CTC head: the LLM alone (greedy), the CTC head alone, and last, the model's decoding, joint
    CTC/LLM beam search. Without: greedy and beam search."""
    if model_has_ctc:
        return [DecodeOptions(beam_size=1), DecodeOptions(ctc_only=True),
                DecodeOptions(beam_size=beam_size, ctc_weight=ctc_weight)]
    return [DecodeOptions(beam_size=1), DecodeOptions(beam_size=beam_size)]


def _test_utterances(store: DatasetStore, version_id: str | None, limit: int | None):
    version = resolve_version(store, version_id)
    sql = f"""SELECT u.utterance_id, u.domain, u.entities, u.text AS reference, a.flac_path, a.num_samples
              FROM {store.table_sql(version, 'utterances')} u
              JOIN {store.table_sql(version, 'normalized_audio')} a USING (utterance_id)
              ORDER BY u.utterance_id"""
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return version, duckdb.connect().sql(sql).to_arrow_table()


def evaluate(
    store: str | Path,
    model_id: str,
    test_version: str | None = None,
    *,
    test_set: str | None = None,
    decodings: list[DecodeOptions] | None = None,
    prompt: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    on_log: Callable[[str], None] | None = None,
) -> EvalReport:
    """Decode every accepted utterance of `test_version` (None: the latest) with model `model_id` and record
    the scores. decodings: None -> `decodings_for` the model (greedy, CTC alone and joint CTC/LLM beam 4
    with lambda 0.3 when it has a CTC head; else greedy and beam 4). prompt: None -> the ASR prompt the
    model was trained with. limit: the first N utterances."""
    say = on_log or log.info
    data_store = DatasetStore(store)
    registry = ModelRegistry(data_store)
    record = registry.model(model_id)
    # the files are those that were published (tamper evidence), or evaluation stops naming the one that differs
    test_version = data_store.ensure_intact(resolve_version(data_store, test_version).version_id,
                                            purpose="evaluation").version_id
    version, utterances = _test_utterances(data_store, test_version, limit)
    test_set = test_set or version.name
    model = load_speech_llm(record.path).to(pick_device(device)).eval()
    decodings = decodings if decodings is not None else decodings_for(model.ctc_head is not None)
    prompt = prompt if prompt is not None else record.config.get("asr_prompt", "Transcribe the speech.")
    rows = utterances.to_pylist()
    overall, files, seconds = {}, {}, {}
    for options in decodings:
        started = time.perf_counter()
        hypotheses = [transcribe(model, AudioSlice(r["flac_path"], 0, r["num_samples"]), prompt, options)
                      for r in rows]
        seconds[options.name] = round(time.perf_counter() - started, 3)
        scored = [{**r, "hypothesis": h} for r, h in zip(rows, hypotheses)]
        records = score_hypotheses(scored)
        per_utterance = utterance_scores(scored)
        table = pa.table({"utterance_id": [r["utterance_id"] for r in rows],
                          "domain": [r["domain"] for r in rows],
                          "reference": [r["reference"] for r in rows],
                          "entities": pa.array([list(r["entities"] or []) for r in rows], pa.list_(pa.string())),
                          "hypothesis": hypotheses})
        for name in per_utterance.column_names:
            if name not in table.column_names:
                table = table.append_column(name, per_utterance[name])
        registry.record_eval(model_id=record.model_id, dataset_version=version.version_id, test_set=test_set,
                             decoding=options.name, metrics=records, utterances=table)
        files[options.name] = registry.eval_path(record.model_id, version.version_id, options.name)
        overall[options.name] = {r.metric: r.value for r in records if r.domain == ALL_DOMAINS}
        say(f"{record.model_id} on {test_set} ({version.version_id}), {options.name}: "
            + ", ".join(f"{k} {overall[options.name][k]:.4f}" for k in ("wer", "entity_accuracy", "eer")
                        if k in overall[options.name]))
    return EvalReport(record.model_id, version.version_id, test_set, overall, files, len(rows), seconds)
