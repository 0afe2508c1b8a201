"""`jstip align`: align a NeMo-style manifest directly, outside a dataset build.

Entry point: `align_manifest(manifest, config, out, fmt, workers)`. The manifest is read by the same
ingestion code as a build (so ids and bad-line handling are the same), the audio is normalised into a
temporary pool and aligned with the configured backend, in `workers` processes. The JSONL output has one
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
import multiprocessing
import re
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from jstip.config import AlignConfig, NormalizeConfig
from jstip.tasks.alignment_io import AlignedWord, textgrid_text, write_ctm
from jstip.tasks.ingest import ingest_manifest

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


def _align_chunk(utterances: pa.Table, config: AlignConfig, normalize_config: NormalizeConfig,
                 audio_dir: str) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Normalise and align one chunk (runs in a worker process)."""
    from jstip.tasks.align import align_shard
    from jstip.tasks.normalize import normalize_shard

    normalized = normalize_shard(utterances, Path(audio_dir), normalize_config)
    aligned = align_shard(utterances, normalized.normalized_audio, config)
    return normalized.normalized_audio, aligned.word_alignments, pa.concat_tables(
        [normalized.quarantine, aligned.quarantine])


def _raw_audio_path(source: str) -> str | None:
    """Best effort: the audio_filepath of a manifest line that ingestion rejected."""
    path, _, line = source.rpartition(":")
    try:
        raw = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[int(line.split("#")[0]) - 1]
        value = json.loads(raw).get("audio_filepath")
        return value if isinstance(value, str) else None
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def align_manifest(manifest: str | Path, config: AlignConfig, out: str | Path, fmt: str = "jsonl",
                   workers: int = 1, normalize_config: NormalizeConfig | None = None) -> AlignSummary:
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    normalize_config = normalize_config or NormalizeConfig()
    out = Path(out)
    ingested = ingest_manifest(manifest)
    utterances = ingested.utterances
    # ingest names files relative to the corpus root; this tool reports (and normalises) absolute paths
    absolute = pa.array([os.path.join(ingested.corpus_root, p) for p in utterances.column("audio_path").to_pylist()],
                        pa.string())
    utterances = utterances.set_column(utterances.schema.get_field_index("audio_path"), "audio_path", absolute)

    with tempfile.TemporaryDirectory(prefix="jstip-align-") as audio_dir:
        workers = max(1, min(workers, utterances.num_rows))
        size = -(-utterances.num_rows // workers) if utterances.num_rows else 0
        chunks = [utterances.slice(k * size, size) for k in range(workers)] if size else []
        if workers == 1:
            results = [_align_chunk(c, config, normalize_config, audio_dir) for c in chunks]
        else:
            # spawn, not fork: torch and the aligners' native libraries do not survive a fork safely
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                results = list(pool.map(_align_chunk, chunks, [config] * len(chunks),
                                        [normalize_config] * len(chunks), [audio_dir] * len(chunks)))

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
    for row in utterances.select(["utterance_id", "audio_path", "source"]).to_pylist():
        uid = row["utterance_id"]
        ok = uid in words and uid not in failures
        entries.append((_line_order(row["source"]), {
            "id": uid, "audio_filepath": row["audio_path"], "status": "ok" if ok else "failed",
            "reason": None if ok else failures.get(uid, "not aligned"),
            "words": [{"word": w.word, "start": round(w.start, 4), "end": round(w.end, 4),
                       "score": None if w.score is None else round(w.score, 4)} for w in words.get(uid, [])] if ok else [],
        }))
    for row in ingested.quarantine.to_pylist():
        entries.append((_line_order(row["source"]), {
            "id": row["utterance_id"],
            "audio_filepath": _raw_audio_path(os.path.join(ingested.corpus_root, row["source"])),
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
            (out / f"{safe}.TextGrid").write_text(textgrid_text(ws, durations.get(uid, 0.0)), encoding="utf-8")
    return AlignSummary(entries=len(entries), aligned=len(ok_entries), failed=len(entries) - len(ok_entries),
                        audio_seconds=float(sum(durations.values())), out=out, status_file=status_file)
