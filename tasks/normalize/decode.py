"""Decoding for normalisation: open a source file once, confined, check it is the content ingest hashed, and
decode an utterance's stretch of it in blocks to float32 mono at the target rate (soundfile + soxr's streaming
resampler), measuring the input (DC offset, clipping, NaN/inf) on the way; `_remove_dc`."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import soxr

from jstip.config import NormalizeConfig
from jstip.storage.content import ConfinementError, FileIdentity, open_confined, sha256_fd

log = logging.getLogger(__name__)

# A sample at or above this magnitude (of full scale) counts as clipped.
_CLIP_LEVEL = 0.999
# Arithmetic over the stored audio in chunks of this many samples, to bound temporary copies.
_CHUNK = 1 << 20
_PCM_SCALE = 32768.0  # int16 full scale, as libsndfile reads it: 16-bit input at the target rate round-trips
# Samples (frames x channels) decoded per block: ~4 MB of float32, whatever the rate and channel count.
_DECODE_BLOCK_SAMPLES = 1 << 20


class _Reject(Exception):
    """An utterance that cannot be normalised: becomes one quarantine row."""

    def __init__(self, check_name: str, reason: str, value: str | None = None, threshold: str | None = None):
        super().__init__(reason)
        self.check_name, self.reason, self.value, self.threshold = check_name, reason, value, threshold


@dataclass
class _Decoded:
    utterance_id: str
    audio: np.ndarray  # float32 mono at the target rate
    orig_rate: int
    orig_channels: int
    dc_offset: float
    clipping_ratio: float
    gain_db: float | None = None
    speech: list[dict] | None = field(default=None, repr=False)  # silero segments, samples at the target rate



class AudioChangedError(RuntimeError):
    """A source audio file's bytes changed between ingest and normalisation: the build must start again."""


class _SourceAudio:
    """Opens the shard's source audio: `corpus_root`/audio_path, confined to `roots` by the opened handle
    (jstip.storage.content.open_confined), its bytes checked against the sha256 ingest recorded. A file
    verified once in this shard (same device, inode, size, mtime and ctime) is not hashed again for its
    other utterances."""

    def __init__(self, corpus_root: str | None, roots: tuple[str, ...] | None):
        self.corpus_root, self.roots = corpus_root or "", roots
        self.verified: set[FileIdentity] = set()

    def open(self, utt: dict) -> int:
        path = utt["audio_path"]
        try:
            fd = open_confined(os.path.join(self.corpus_root, path), self.roots)
        except ConfinementError as e:
            shown = str(e).replace(os.path.join(self.corpus_root, ""), "")
            raise _Reject("path_outside_allowed_roots", f"refused audio {path}: {shown}") from None
        except FileNotFoundError:
            raise _Reject("audio_not_found", f"audio file not found: {path}") from None
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) else e
            raise _Reject("audio_unreadable", f"cannot read audio {path}: {reason}") from None
        try:
            expected = utt.get("audio_sha256")
            identity = FileIdentity.of(os.fstat(fd))
            if expected is not None and identity not in self.verified:
                _, found = sha256_fd(fd)
                if found != expected:
                    raise AudioChangedError(
                        f"{utt.get('source')}: audio {path} changed after ingest (sha256 {found[:12]}..., ingest read "
                        f"{expected[:12]}...); nothing was published: rerun the build once the corpus is no longer "
                        f"being written")
                self.verified.add(identity)
            os.lseek(fd, 0, os.SEEK_SET)
            return fd
        except BaseException:
            os.close(fd)
            raise


def _decode(utt: dict, config: NormalizeConfig, source: _SourceAudio) -> _Decoded:
    path = utt["audio_path"]
    fd = source.open(utt)
    try:
        if os.fstat(fd).st_size == 0:
            raise _Reject("audio_empty", f"audio file {path} is empty (0 bytes)", value="0 bytes")
        try:
            audio_file = sf.SoundFile(fd, closefd=False)
        except Exception as e:  # libsndfile raises LibsndfileError, soundfile also RuntimeError/TypeError
            # libsndfile's own words: soundfile's message names the descriptor, which differs run to run
            raise _Reject("audio_unreadable", f"cannot decode audio {path}: {getattr(e, 'error_string', e)}") from None
        with audio_file:
            return _decode_range(audio_file, utt, config)
    finally:
        os.close(fd)


def _decode_range(audio_file: sf.SoundFile, utt: dict, config: NormalizeConfig) -> _Decoded:
    path, start, duration, channel = utt["audio_path"], utt["start"], utt["duration"], utt.get("channel")
    rate, channels, frames = audio_file.samplerate, audio_file.channels, audio_file.frames
    file_s = frames / rate
    if frames <= 0:
        raise _Reject("audio_empty", f"audio {path} holds no samples", value="0 samples")
    end = file_s if duration is None else start + duration
    first = round(start * rate)
    last = frames if duration is None else first + round(duration * rate)
    if start < 0 or first >= frames or end < start or last > frames + round(config.range_tolerance_s * rate):
        raise _Reject("audio_out_of_range",
                      f"utterance range {start:.3f}-{end:.3f} s lies outside audio {path} ({file_s:.3f} s long)",
                      value=f"{start:.3f}-{end:.3f}", threshold=f"0.000-{file_s:.3f}")
    last = min(last, frames)  # within the tolerance: the manifest's duration was rounded or from another decoder
    if last <= first:
        raise _Reject("audio_empty", f"utterance range {start:.3f}-{end:.3f} s of audio {path} holds no samples",
                      value="0 samples")
    if channel is not None and not 0 <= channel < channels:
        raise _Reject("audio_channel", f"channel {channel} requested, audio {path} has {channels} channel(s)",
                      value=str(channel), threshold=f"0-{channels - 1}")

    num_frames = last - first
    target = config.sample_rate
    resampler = soxr.ResampleStream(rate, target, 1, dtype="float32", quality="HQ") if rate != target else None
    out = np.empty(math.ceil(num_frames * target / rate) + 64, dtype=np.float32)
    written = 0
    block = np.empty((max(4096, _DECODE_BLOCK_SAMPLES // channels), channels), dtype=np.float32)
    total, clipped, done = 0.0, 0, 0
    try:
        for data in _blocks(audio_file, first, num_frames, block):
            if channel is not None and channels > 1:
                data = data[:, channel:channel + 1]
            high, low = data.max(), data.min()  # NaN and inf propagate: one pass finds them and clipping
            if not (np.isfinite(high) and np.isfinite(low)):
                at = start + (done + int(np.argmin(np.isfinite(data).all(axis=1)))) / rate
                raise _Reject("audio_nonfinite", f"audio {path} holds NaN/inf samples, the first at {at:.3f} s",
                              value=f"{at:.3f}")
            if high >= _CLIP_LEVEL or low <= -_CLIP_LEVEL:
                clipped += int(np.count_nonzero(np.abs(data) >= _CLIP_LEVEL))
            # channel sum by columns: 20x faster than data.mean(axis=1), and exact for <= 16-bit input
            mono = data[:, 0].copy()
            for c in range(1, data.shape[1]):
                mono += data[:, c]
            total += float(mono.sum(dtype=np.float64))
            if data.shape[1] > 1:
                mono *= np.float32(1 / data.shape[1])
            done += len(data)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=done >= num_frames)
            out, written = _append(out, written, mono)
    except _Reject:
        raise
    except Exception as e:  # a decoder error mid-file (e.g. "flac decoder lost sync")
        raise _Reject("audio_unreadable", f"cannot decode audio {path} at {start + done / rate:.3f} s: "
                      f"{getattr(e, 'error_string', e)}") from None
    if resampler is not None and done < num_frames:  # ended early: flush what the resampler holds
        out, written = _append(out, written, resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    if done < num_frames - round(config.range_tolerance_s * rate):  # within it: as for a rounded duration
        raise _Reject("audio_truncated", f"audio {path} ended after {done / rate:.3f} s of the utterance's "
                      f"{num_frames / rate:.3f} s (file truncated?)", value=f"{done / rate:.3f}",
                      threshold=f"{num_frames / rate:.3f}")
    if written == 0:
        raise _Reject("audio_empty", f"utterance range of audio {path} is shorter than one sample at {target} Hz",
                      value="0 samples")
    used = done * (channels if channel is None else 1)
    return _Decoded(utt["utterance_id"], out[:written], rate, channels, dc_offset=total / used,
                    clipping_ratio=clipped / used)


def _blocks(audio_file: sf.SoundFile, first: int, num_frames: int, block: np.ndarray) -> Iterator[np.ndarray]:
    """Frames [first, first+num_frames) as float32 (frames, channels) blocks; fewer if the file ends early."""
    if audio_file.format == "MP3":
        # libsndfile 1.2's MP3 decoding (mpg123) garbles samples at every read-call boundary and its seek
        # lands hundreds of frames off; one read from the file's start is exact. That holds the range at
        # the input rate in memory (a 1-hour 44.1 kHz stereo MP3: 1.3 GB).
        whole = audio_file.read(first + num_frames, dtype="float32", always_2d=True)
        for i in range(first, len(whole), len(block)):
            yield whole[i:i + len(block)]
        return
    audio_file.seek(first)
    done = 0
    while done < num_frames:
        data = audio_file.read(out=block[:min(len(block), num_frames - done)])
        if len(data) == 0:
            return
        done += len(data)
        yield data


def _append(out: np.ndarray, written: int, chunk: np.ndarray) -> tuple[np.ndarray, int]:
    if written + len(chunk) > len(out):
        out = np.resize(out, written + len(chunk))
    out[written:written + len(chunk)] = chunk
    return out, written + len(chunk)


# A DC offset below this (of full scale, -60 dBFS) is left alone: it moves no energy or VAD decision, and
# leaving it keeps the stored PCM of ordinary recordings bit-exact.
_DC_REMOVE_MIN = 1e-3


def _remove_dc(decoded: _Decoded) -> None:
    """Subtract the utterance's mean from its audio, before loudness, VAD and every energy measurement.

    A constant offset (a cheap sound card, a bad ADC calibration; 0.1-0.5 of full scale seen in crawled
    audio) is energy without signal: every frame's power then sits at the offset's level, so the aligner's
    speech/silence contrast and silero-vad see no speech. `dc_offset` keeps the measured input value.

    A mean is an offset only when it stands out of the signal's own variation: wide-band noise or a tone has
    a mean of about std / sqrt(n) by chance (1 s of full-scale white noise: ~0.005), and subtracting that
    would change audio that has no offset at all. So the mean is removed when it is above -60 dBFS and
    above 4 standard errors (std / sqrt(n)), i.e. not a chance value (p < 1e-4)."""
    audio, n = decoded.audio, len(decoded.audio)
    total = squares = 0.0
    for i in range(0, n, _CHUNK):
        chunk = audio[i:i + _CHUNK].astype(np.float64)
        total += float(chunk.sum())
        squares += float(np.square(chunk).sum())
    mean = total / max(n, 1)
    std = math.sqrt(max(squares / max(n, 1) - mean * mean, 0.0))
    if abs(mean) > max(_DC_REMOVE_MIN, 4.0 * std / math.sqrt(max(n, 1))):
        audio -= np.float32(mean)
