"""Audio normalisation: decode, mono, resample, optional loudness and silence trim, 16-bit FLAC, content hash.

Entry point: `normalize_shard(utterances, audio_dir, config, corpus_root, roots)`. For every utterance:

0. open its audio file once, confined to `roots` by the opened handle, check its bytes still have the
   sha256 that ingest recorded (`audio_sha256`: the content the shard key names), and decode from that
   same handle (`_open_source`): the file checked is the file read, and a version id always names the
   audio it was computed from;

1. decode its stretch `[start, start+duration)` of the recording with soundfile (anything libsndfile reads:
   WAV/FLAC/Ogg/MP3/...), in blocks of ~1 M samples, so that a 2-hour 48 kHz stereo file is never held
   as one float array (MP3 excepted: see `_blocks`); per block, measure the input (DC offset, clipping,
   NaN/inf), take the manifest's `channel` or else average all channels, and feed soxr's streaming
   resampler (HQ) to `sample_rate`;
2. (`loudness_lufs`) scale to the target ITU-R BS.1770-4 integrated loudness, the gain limited so that the
   sample peak stays at or below `max_peak_dbfs`: normalisation never clips;
3. (`measure_speech` or `trim_silence`) find speech with silero-vad, batched over the utterances of the
   shard; (`trim_silence`) cut leading and trailing non-speech, keeping `trim_padding_s` around the speech
   (no speech found: nothing is cut), and match the loudness target again on what is kept;
4. round to 16-bit PCM and write FLAC into the content-addressed pool `audio_dir/<hash[:2]>/<hash>.flac`,
   the hash being the sha256 of that PCM: identical audio is stored, and later aligned, once.

Every utterance ends as a `normalized_audio` row or a `quarantine` row whose reason starts with the
manifest's file:line and names the audio file; one bad item never stops the shard. Check names:
`audio_not_found`, `audio_empty` (0-byte file, no samples, empty range), `audio_unreadable` (libsndfile
cannot open or decode it), `audio_truncated` (it ends more than `range_tolerance_s` before its header
said), `audio_nonfinite` (NaN/inf samples), `audio_out_of_range` (the range lies outside the file by more
than `range_tolerance_s`), `audio_channel` (the manifest's channel does not exist).

DC: the utterance's mean is subtracted after decoding (when above -60 dBFS), before loudness, VAD and the
aligner's energy checks (`_remove_dc`).

Measurements (NORMALIZED_AUDIO): of the INPUT, before any processing: `dc_offset`, `clipping_ratio`,
`orig_sampling_rate`, `orig_num_channels`; of the STORED audio: `peak_dbfs`, `rms_dbfs`, `loudness_lufs`,
`speech_ratio`; and what was done: `loudness_gain_db`, `trimmed_lead_s`, `trimmed_trail_s`.

Speed (benchmarks/normalize_throughput.py, BENCHMARKS.md; per core): decoding, resampling, loudness and
FLAC together ~1100x real time for speech at mixed rates; with silero-vad computed as in
`speech_probabilities` (the default) ~700x. silero's own window-by-window loop runs ~100-250x: with it
the stage would miss its 300x target. Memory: the utterance at the target rate as float32 and int16
(a 2-hour file: 0.7 GB) plus ~4 MB decode blocks, whatever the input's rate and channels.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile as sf

from jstip.config import NormalizeConfig
from jstip.schemas import from_rows
from jstip.storage.content import sha256_file
from jstip.storage.audio_pool import AudioPool
from jstip.tasks.normalize.decode import (_CHUNK, _PCM_SCALE, AudioChangedError, _Decoded, _decode, _Reject,
                                          _remove_dc, _SourceAudio)
from jstip.tasks.normalize.loudness import _normalize_loudness, integrated_loudness
from jstip.tasks.normalize.vad import speech_segments

log = logging.getLogger(__name__)

# Decoded audio held before speech detection runs over it (seconds at the target rate): many utterances
# per LSTM call, and a bound on memory (600 s = 38 MB of float32).
_GROUP_SECONDS = 600.0


@dataclass
class NormalizeResult:
    normalized_audio: pa.Table
    quarantine: pa.Table


# ------------------------------------------------------------------------------------------------- output


def write_flac(pcm16: np.ndarray, sample_rate: int, audio_dir: Path) -> tuple[str, Path]:
    """Write 16-bit PCM into the content-addressed pool (once per content); return (hash, path)."""
    audio_hash = hashlib.sha256(memoryview(np.ascontiguousarray(pcm16))).hexdigest()
    pool = AudioPool(audio_dir)
    path = pool.path(audio_hash)
    if not path.exists():
        # encoded in memory, written by Python (AudioPool.put): a full disk is an OSError (ENOSPC) that says so,
        # where libsndfile writing the file itself reports only "System error"
        encoded = io.BytesIO()
        sf.write(encoded, pcm16, sample_rate, subtype="PCM_16", format="FLAC")
        pool.put(audio_hash, encoded.getbuffer())
    return audio_hash, path


def _to_pcm16(audio: np.ndarray) -> np.ndarray:
    pcm16 = np.empty(len(audio), dtype=np.int16)
    for i in range(0, len(audio), _CHUNK):
        scaled = np.rint(audio[i:i + _CHUNK] * np.float32(_PCM_SCALE))
        pcm16[i:i + _CHUNK] = np.clip(scaled, -32768, 32767)
    return pcm16


def _dbfs(x: float) -> float:
    return float(20 * np.log10(max(x, 1e-10)))


def _finish(decoded: _Decoded, audio_dir: Path, config: NormalizeConfig) -> dict:
    rate, audio = config.sample_rate, decoded.audio
    lead = trail = 0
    if config.trim_silence and decoded.speech:  # no speech found: keep everything (speech_ratio 0 says so)
        pad = round(config.trim_padding_s * rate)
        lead = max(0, decoded.speech[0]["start"] - pad)
        trail = len(audio) - min(len(audio), decoded.speech[-1]["end"] + pad)
        audio = audio[lead:len(audio) - trail]
        if config.loudness_lufs is not None and (lead or trail) and decoded.gain_db is not None:
            # the gain was set on the untrimmed audio, whose edge blocks (part speech, part silence) pass
            # the gates too: match the target on what is stored
            decoded.gain_db += _normalize_loudness(audio, config) or 0.0
    speech_ratio = None
    if decoded.speech is not None:
        speech_ratio = sum(s["end"] - s["start"] for s in decoded.speech) / len(audio)
    loudness = integrated_loudness(audio, rate)
    pcm16 = _to_pcm16(audio)
    audio_hash, flac_path = write_flac(pcm16, rate, audio_dir)
    flac_bytes, flac_sha256 = sha256_file(flac_path)  # of the file as it is in the pool (tamper evidence)
    peak, sum_squares = 0, 0
    for i in range(0, len(pcm16), _CHUNK):
        # int64, exact; a float64 np.dot would go to BLAS, whose idle threads spin on every core (measured:
        # the stage's CPU time halved without it)
        chunk = pcm16[i:i + _CHUNK].astype(np.int64)
        peak = max(peak, int(np.abs(chunk).max()))
        sum_squares += int(np.dot(chunk, chunk))
    return dict(
        utterance_id=decoded.utterance_id, audio_hash=audio_hash, flac_path=str(flac_path),
        sampling_rate=rate, num_samples=len(pcm16), duration=len(pcm16) / rate,
        orig_sampling_rate=decoded.orig_rate, orig_num_channels=decoded.orig_channels,
        peak_dbfs=_dbfs(peak / _PCM_SCALE), rms_dbfs=_dbfs(math.sqrt(sum_squares / len(pcm16)) / _PCM_SCALE),
        clipping_ratio=decoded.clipping_ratio, dc_offset=decoded.dc_offset, loudness_lufs=loudness,
        loudness_gain_db=decoded.gain_db, speech_ratio=speech_ratio,
        trimmed_lead_s=lead / rate, trimmed_trail_s=trail / rate, flac_bytes=flac_bytes, flac_sha256=flac_sha256,
    )


# -------------------------------------------------------------------------------------------------- shard


def normalize_shard(utterances: pa.Table, audio_dir: Path, config: NormalizeConfig, corpus_root: str | None = None,
                    roots: tuple[str, ...] | None = None) -> NormalizeResult:
    """Normalise the audio of every utterance in the shard; what cannot be normalised is quarantined.

    Audio paths are relative to `corpus_root` (absolute ones are used as they are); `roots`: the real
    directories they must lie in (None: anywhere). A file whose bytes no longer have the sha256 ingest
    recorded raises AudioChangedError: the shard's key names content that is no longer there."""
    source = _SourceAudio(corpus_root, roots)
    rows: list[dict] = []
    quarantined: list[dict] = []
    group: list[_Decoded] = []
    group_samples = 0
    detect_speech = config.measure_speech or config.trim_silence

    def flush() -> None:
        nonlocal group, group_samples
        if config.loudness_lufs is not None:  # before speech detection: silero misses speech below ~-40 dBFS
            for decoded in group:
                decoded.gain_db = _normalize_loudness(decoded.audio, config)
        if detect_speech and group:
            segments = speech_segments([d.audio for d in group], config.sample_rate, config.vad_threshold)
            for decoded, speech in zip(group, segments):
                decoded.speech = speech
        rows.extend(_finish(decoded, audio_dir, config) for decoded in group)
        group, group_samples = [], 0

    names = [n for n in ("utterance_id", "audio_path", "start", "duration", "channel", "source", "audio_sha256")
             if n in utterances.column_names]
    for utt in utterances.select(names).to_pylist():
        try:
            decoded = _decode(utt, config, source)
        except _Reject as e:
            reason = f"{utt['source']}: {e.reason}"
            log.warning(reason)
            quarantined.append(dict(utterance_id=utt["utterance_id"], stage="normalize", check_name=e.check_name,
                                    value=e.value, threshold=e.threshold, reason=reason, source=utt["source"]))
            continue
        except AudioChangedError:
            raise
        except Exception as e:  # one item's surprise must not stop the shard; its reason says what happened
            reason = f"{utt['source']}: cannot decode audio {utt['audio_path']}: {type(e).__name__}: {e}"
            log.exception(reason)
            quarantined.append(dict(utterance_id=utt["utterance_id"], stage="normalize",
                                    check_name="audio_unreadable", value=None, threshold=None, reason=reason,
                                    source=utt["source"]))
            continue
        _remove_dc(decoded)
        group.append(decoded)
        group_samples += len(decoded.audio)
        if group_samples >= _GROUP_SECONDS * config.sample_rate:
            flush()
    flush()
    return NormalizeResult(from_rows("normalized_audio", rows), from_rows("quarantine", quarantined))
