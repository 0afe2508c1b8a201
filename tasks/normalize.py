"""Audio normalisation (first cut): decode, downmix to mono, resample, 16-bit FLAC, content hash.

Entry point: `normalize_shard(utterances, audio_dir, config)`. Each utterance's stretch of its recording is
decoded with soundfile, averaged to mono, resampled with soxr (high quality), converted to 16-bit and
written as FLAC into the content-addressed pool `audio_dir/<hash[:2]>/<hash>.flac`, where the hash is the
sha256 of the 16-bit PCM: identical audio is stored, and later aligned, once.
Per-utterance measurements (peak, RMS, clipping ratio, original rate and channels) feed the quality checks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile as sf
import soxr

from jstip.config import NormalizeConfig
from jstip.schemas import from_rows

log = logging.getLogger(__name__)

# A sample at or above this magnitude (of full scale) counts as clipped.
_CLIP_LEVEL = 0.999


@dataclass
class NormalizeResult:
    normalized_audio: pa.Table
    quarantine: pa.Table


def _decode(path: str, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    """Decode [start, start+duration) of an audio file as float32 (frames, channels)."""
    info = sf.info(path)
    first = int(round(start * info.samplerate))
    last = None if duration is None else first + int(round(duration * info.samplerate))
    if first >= info.frames > 0:
        raise ValueError(f"start {start:.3f}s is past the end of the recording ({info.frames / info.samplerate:.3f}s)")
    data, rate = sf.read(path, start=first, stop=last, dtype="float32", always_2d=True)
    return data, rate


def _dbfs(x: float) -> float:
    return float(20 * np.log10(max(x, 1e-10)))


def write_flac(pcm16: np.ndarray, sample_rate: int, audio_dir: Path) -> tuple[str, Path]:
    """Write 16-bit PCM into the content-addressed pool (once per content); return (hash, path)."""
    audio_hash = hashlib.sha256(pcm16.tobytes()).hexdigest()
    path = Path(audio_dir) / audio_hash[:2] / f"{audio_hash}.flac"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        sf.write(tmp, pcm16, sample_rate, subtype="PCM_16", format="FLAC")
        os.replace(tmp, path)
    return audio_hash, path


def normalize_shard(utterances: pa.Table, audio_dir: Path, config: NormalizeConfig) -> NormalizeResult:
    """Normalise the audio of every utterance in the shard; unreadable or empty audio is quarantined."""
    rows, quarantined = [], []
    columns = utterances.select(["utterance_id", "audio_path", "start", "duration", "source"]).to_pylist()
    for utt in columns:
        utt_id, path = utt["utterance_id"], utt["audio_path"]
        try:
            data, rate = _decode(path, utt["start"], utt["duration"])
        except (sf.LibsndfileError, OSError, RuntimeError, ValueError) as e:
            reason = f"{utt['source']}: cannot decode audio {path}: {e}"
            log.warning(reason)
            quarantined.append(dict(utterance_id=utt_id, stage="normalize", check_name="audio_unreadable",
                                    value=None, threshold=None, reason=reason, source=utt["source"]))
            continue
        if data.shape[0] == 0:
            quarantined.append(dict(utterance_id=utt_id, stage="normalize", check_name="audio_empty", value="0",
                                    threshold=None, reason=f"{utt['source']}: audio {path} holds no samples "
                                    f"in the utterance's time range", source=utt["source"]))
            continue
        channels = data.shape[1]
        clipping_ratio = float(np.mean(np.abs(data) >= _CLIP_LEVEL))
        mono = data.mean(axis=1) if channels > 1 else data[:, 0]
        if rate != config.sample_rate:
            mono = soxr.resample(mono, rate, config.sample_rate, quality="HQ")
        pcm16 = (np.clip(mono, -1.0, 1.0) * 32767.0).round().astype(np.int16)
        audio_hash, flac_path = write_flac(pcm16, config.sample_rate, audio_dir)
        as_float = pcm16.astype(np.float32) / 32768.0
        rows.append(dict(
            utterance_id=utt_id, audio_hash=audio_hash, flac_path=str(flac_path),
            sampling_rate=config.sample_rate, num_samples=len(pcm16), duration=len(pcm16) / config.sample_rate,
            orig_sampling_rate=rate, orig_num_channels=channels,
            peak_dbfs=_dbfs(float(np.abs(as_float).max())), rms_dbfs=_dbfs(float(np.sqrt(np.mean(as_float**2)))),
            clipping_ratio=clipping_ratio,
        ))
    return NormalizeResult(from_rows("normalized_audio", rows), from_rows("quarantine", quarantined))
