"""`jstip align`: align a NeMo-style manifest directly, outside a dataset build.

Entry point: `align_manifest(manifest, config, out, fmt, workers)`. It runs the build's own stage chain
(jstip.tasks.stages: ingest, then SHARD_CHAIN up to "align") over a temporary store, so ids, bad-line handling,
confinement (`ingest.allowed_roots`), normalisation, the checks needing no alignment and every verdict of the
aligner are the build's; the shards are spread over `workers` processes. The JSONL output has one
line per non-blank input line, in input order:

    {"id", "audio_filepath", "status": "ok"|"failed", "reason", "words": [{"word", "start", "end", "score"}]}

with `words` the transcript's own whitespace-separated words (tasks.text.split_words), times in seconds
from the start of the utterance. `ctm` and `textgrid` export the aligned utterances; they also write the
JSONL beside them (`<out>.status.jsonl`, `<dir>/status.jsonl`) so that failures are never only a log line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jstip.config import BuildConfig
from jstip.tasks import stages
from jstip.tasks.aligners.alignment_io import AlignedWord, write_ctm, write_textgrid

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("jsonl", "ctm", "textgrid")
_LINE = re.compile(r":(\d+)(?:#(\d+))?$")


@dataclass(frozen=True)
class AlignSummary:
    entries: int
    aligned: int
    failed: int
    audio_seconds: float
    out: Path
    status_file: Path


def _line_order(source: str) -> tuple[int, int]:
    match = _LINE.search(source or "")
    return (int(match.group(1)), int(match.group(2) or 0)) if match else (0, 0)


def _raw_audio_path(source: str) -> str | None:
    """Best effort: the audio_filepath of a manifest line that ingestion rejected."""
    path, _, line = source.rpartition(":")
    try:
        raw = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[int(line.split("#")[0]) - 1]
        value = json.loads(raw).get("audio_filepath")
        return value if isinstance(value, str) else None
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def align_manifest(manifest: str | Path, config: BuildConfig, out: str | Path, fmt: str = "jsonl",
                   workers: int = 1) -> AlignSummary:
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    out = Path(out)
    build = config
    with tempfile.TemporaryDirectory(prefix="jstip-align-") as store:
        ingested = stages.ingest(str(manifest), None, store, build)
        accepted = sum(shard.num_utterances for shard in ingested.shards)
        if workers > 1 and len(ingested.shards) < min(workers, accepted):
            # one shard per worker: cut again (the audio hashes of the first pass are reused)
            build = config.model_copy(update={"shard_size": -(-accepted // workers)})
            ingested = stages.ingest(str(manifest), None, store, build)
        runner = stages.InProcessPool(workers) if workers > 1 and len(ingested.shards) > 1 else stages.InProcess()
        with runner:
            outputs = stages.run_shard_chain(runner, ingested.shards, store, build, until="align")
        corpus_root = ingested.corpus_root
        ingest_quarantine = pq.read_table(ingested.tables["quarantine"])
        utterances = [row for s in ingested.shards
                      for row in pq.read_table(s.path, columns=["utterance_id", "audio_path", "source"]).to_pylist()]
        results = [(o.read("normalized_audio"), a.read("word_alignments"),
                    pa.concat_tables([o.read("quarantine"), a.read("quarantine")]))
                   for o, a in zip(outputs["normalize"], outputs["align"])]

    durations: dict[str, float] = {}
    words: dict[str, list[AlignedWord]] = {}
    failures: dict[str, str] = {}
    for audio, aligned, quarantine in results:
        ids = audio.column("utterance_id").to_pylist()
        # times are reported against the utterance as the manifest gave it: add back trimmed silence
        lead = dict(zip(ids, (t or 0.0 for t in audio.column("trimmed_lead_s").to_pylist())))
        trail = dict(zip(ids, (t or 0.0 for t in audio.column("trimmed_trail_s").to_pylist())))
        durations.update((i, d + lead[i] + trail[i]) for i, d in zip(ids, audio.column("duration").to_pylist()))
        for row in aligned.sort_by([("utterance_id", "ascending"), ("word_index", "ascending")]).to_pylist():
            offset = lead[row["utterance_id"]]
            words.setdefault(row["utterance_id"], []).append(
                AlignedWord(row["word"], row["start"] + offset, row["end"] + offset, row["score"]))
        for row in quarantine.to_pylist():
            failures.setdefault(row["utterance_id"], row["reason"])

    entries = []
    for row in utterances:
        uid = row["utterance_id"]
        ok = uid in words and uid not in failures
        entries.append((_line_order(row["source"]), {
            "id": uid, "audio_filepath": os.path.join(corpus_root, row["audio_path"]), "status": "ok" if ok else "failed",
            "reason": None if ok else failures.get(uid, "not aligned"),
            "words": [{"word": w.word, "start": round(w.start, 4), "end": round(w.end, 4),
                       "score": None if w.score is None else round(w.score, 4)} for w in words.get(uid, [])] if ok else [],
        }))
    for row in ingest_quarantine.to_pylist():
        entries.append((_line_order(row["source"]), {
            "id": row["utterance_id"],
            "audio_filepath": _raw_audio_path(os.path.join(corpus_root, row["source"])),
            "status": "failed",
            "reason": row["reason"], "words": []}))
    entries.sort(key=lambda e: e[0])
    lines = [json.dumps(e, ensure_ascii=False) for _, e in entries]

    if fmt == "jsonl":
        status_file = out
    elif fmt == "ctm":
        status_file = out.with_name(out.name + ".status.jsonl")
    else:
        out.mkdir(parents=True, exist_ok=True)
        status_file = out / "status.jsonl"
    status_file.parent.mkdir(parents=True, exist_ok=True)
    status_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    ok_entries = [e for _, e in entries if e["status"] == "ok"]
    aligned_words = {e["id"]: [AlignedWord(w["word"], w["start"], w["end"], w["score"]) for w in e["words"]]
                     for e in ok_entries}
    if fmt == "ctm":
        write_ctm(aligned_words, out)
    elif fmt == "textgrid":
        for uid, ws in aligned_words.items():
            safe = re.sub(r"[^\w.-]", "_", uid)
            write_textgrid(ws, durations.get(uid, 0.0), out / f"{safe}.TextGrid")
    return AlignSummary(entries=len(entries), aligned=len(ok_entries), failed=len(entries) - len(ok_entries),
                        audio_seconds=float(sum(durations.values())), out=out, status_file=status_file)
