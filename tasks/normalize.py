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
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile as sf
import soxr
from scipy.signal import sosfilt

from jstip.config import NormalizeConfig
from jstip.schemas import from_rows
from jstip.storage.content import ConfinementError, FileIdentity, open_confined, sha256_fd, sha256_file
from jstip.storage.lock import temp_name
from jstip.storage.store import TEMP_DIR

log = logging.getLogger(__name__)

# A sample at or above this magnitude (of full scale) counts as clipped.
_CLIP_LEVEL = 0.999
# Samples (frames x channels) decoded per block: ~4 MB of float32, whatever the rate and channel count.
_DECODE_BLOCK_SAMPLES = 1 << 20
# Decoded audio held before speech detection runs over it (seconds at the target rate): many utterances
# per LSTM call, and a bound on memory (600 s = 38 MB of float32).
_GROUP_SECONDS = 600.0
# silero-vad windows per encoder call: 256-2048 run alike (~2000x real time per core), 128 is slower.
_VAD_ENCODER_BATCH = 512
# silero-vad windows per LSTM call and utterance (~131 s): bounds the LSTM's workspace on long audio.
_VAD_TIME_CHUNK = 4096
# Arithmetic over the stored audio in chunks of this many samples, to bound temporary copies.
_CHUNK = 1 << 20
_PCM_SCALE = 32768.0  # int16 full scale, as libsndfile reads it: 16-bit input at the target rate round-trips


@dataclass
class NormalizeResult:
    normalized_audio: pa.Table
    quarantine: pa.Table


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


# ----------------------------------------------------------------------------------------------- decoding


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


# ------------------------------------------------------------------------------------- loudness (BS.1770)


def _k_weighting(sample_rate: int) -> np.ndarray:
    """BS.1770 K-weighting (high shelf, then high pass) as second-order sections for any sample rate.

    BS.1770 tabulates the coefficients at 48 kHz only. These are De Man's analog prototypes
    (github.com/BrechtDeMan/loudness.py, also pyloudnorm's "DeMan" filters), bilinear-transformed: at
    48 kHz they reproduce the standard's coefficients to 1e-12 (and pyloudnorm's "DeMan" meter to the
    last digit). At 16 kHz the shelf's warping near Nyquist reads a full-scale 997 Hz sine as -2.97 LUFS.
    """
    k = math.tan(math.pi * 1681.9744509555319 / sample_rate)
    q = 0.7071752369554193
    vh = 10 ** (3.99984385397 / 20)
    vb = vh ** 0.499666774155
    a0 = 1 + k / q + k * k
    shelf = [(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0,
             1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    k = math.tan(math.pi * 38.13547087613982 / sample_rate)
    q = 0.5003270373253953
    a0 = 1 + k / q + k * k
    high_pass = [1.0, -2.0, 1.0, 1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    return np.array([shelf, high_pass])


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float | None:
    """ITU-R BS.1770-4 integrated loudness of mono audio in LUFS (a full-scale 997 Hz sine reads -3.01).

    K-weighted mean square over 400 ms blocks with 75% overlap, gated at -70 LUFS (absolute) and
    10 LU below the loudness of the blocks passing that (relative). None where it is undefined:
    shorter than one block, or every block below the absolute gate (digital silence).
    """
    hop = round(0.1 * sample_rate)
    num_hops = len(audio) // hop
    if num_hops < 4:
        return None
    sos, state = _k_weighting(sample_rate), np.zeros((2, 2))
    hop_energy = np.empty(num_hops)
    hops_per_chunk = max(1, _CHUNK // hop)
    for h in range(0, num_hops, hops_per_chunk):
        h_end = min(h + hops_per_chunk, num_hops)
        weighted, state = sosfilt(sos, audio[h * hop:h_end * hop], zi=state)
        hop_energy[h:h_end] = np.square(weighted).reshape(-1, hop).sum(axis=1)
    block_power = (hop_energy[:-3] + hop_energy[1:-2] + hop_energy[2:-1] + hop_energy[3:]) / (4 * hop)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10 * np.log10(block_power)
    above_absolute = block_lufs > -70.0
    if not above_absolute.any():
        return None
    relative_gate = -0.691 + 10 * np.log10(block_power[above_absolute].mean()) - 10.0
    gated = block_power[above_absolute & (block_lufs > relative_gate)]
    return float(-0.691 + 10 * np.log10(gated.mean()))


def _normalize_loudness(audio: np.ndarray, config: NormalizeConfig) -> float | None:
    """Scale `audio` in place towards config.loudness_lufs and return the gain in dB (None: no loudness to
    match, silent or shorter than one block). The gain never lifts the sample peak above max_peak_dbfs,
    nor above 16-bit full scale."""
    loudness = integrated_loudness(audio, config.sample_rate)
    if loudness is None:
        return None
    gain = 10 ** ((config.loudness_lufs - loudness) / 20)
    peak = _peak(audio)
    ceiling = min(10 ** (config.max_peak_dbfs / 20), 32767 / _PCM_SCALE)
    if peak > 0 and peak * gain > ceiling:
        gain = ceiling / peak
    audio *= np.float32(gain)
    return float(20 * np.log10(gain))


def _peak(audio: np.ndarray) -> float:
    return max((float(np.abs(audio[i:i + _CHUNK]).max()) for i in range(0, len(audio), _CHUNK)), default=0.0)


# ---------------------------------------------------------------------------------------------- silero-vad

_vad_lock = threading.Lock()
_vad: dict[int, tuple] = {}  # sample rate -> (silero network for that rate, torch LSTM with its weights)


def _silero(sample_rate: int = 16000) -> tuple:
    """silero-vad's network for `sample_rate` (from its wheel: no download), loaded once per process."""
    with _vad_lock:
        if sample_rate not in _vad:
            import torch

            threads = torch.get_num_threads()
            with warnings.catch_warnings():  # its loader uses deprecated importlib.resources.path, torch.jit.load
                warnings.simplefilter("ignore", DeprecationWarning)
                from silero_vad import load_silero_vad

                model = load_silero_vad()
            torch.set_num_threads(threads)  # importing silero_vad.model sets 1 thread for the whole process
            network = model._model if sample_rate == 16000 else model._model_8k
            cell = network.decoder.rnn
            lstm = torch.nn.LSTM(cell.weight_ih.shape[1], cell.weight_hh.shape[1])
            with torch.no_grad():
                for mine, theirs in ((lstm.weight_ih_l0, cell.weight_ih), (lstm.weight_hh_l0, cell.weight_hh),
                                     (lstm.bias_ih_l0, cell.bias_ih), (lstm.bias_hh_l0, cell.bias_hh)):
                    mine.copy_(theirs)
            _vad[sample_rate] = (network, lstm.eval())
    return _vad[sample_rate]


def speech_probabilities(audios: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
    """silero-vad's speech probability for every 32 ms window of each mono float32 audio: the numbers its
    `get_speech_timestamps` computes (to ~1e-5), several times faster.

    silero's network is stateless up to one LSTM cell: per window, [64 samples of context + 512 new]
    -> STFT -> conv encoder -> LSTM cell (the only state) -> conv -> sigmoid. Called one window at a time,
    as silero does, it runs ~100-250x real time per core. Here the stateless encoder runs over many
    windows at once, and the LSTM over every utterance's sequence at once as a torch.nn.LSTM holding the
    cell's weights (the same gate equations): ~1000x. Time is cut into chunks of _VAD_TIME_CHUNK windows
    with the LSTM state carried across, so memory stays small for a 2-hour file and results stay exact.
    """
    import torch

    window = 512 if sample_rate == 16000 else 256
    context = window // 8  # 64 samples at 16 kHz, 32 at 8 kHz
    network, lstm = _silero(sample_rate)
    counts = [math.ceil(len(audio) / window) for audio in audios]
    probabilities = [np.empty(n, dtype=np.float32) for n in counts]
    state: dict[int, tuple] = {}  # audio index -> LSTM (h, c) after the previous time chunk
    with torch.inference_mode():
        for t in range(0, max(counts, default=0), _VAD_TIME_CHUNK):
            active = [i for i, n in enumerate(counts) if n > t]
            encoded = []
            for i in active:
                count = min(_VAD_TIME_CHUNK, counts[i] - t)
                encoded.append(torch.cat([
                    network.encoder(network.run_extractors(torch.from_numpy(_frames(
                        audios[i], t + w, min(_VAD_ENCODER_BATCH, count - w), window, context)))).squeeze(-1)
                    for w in range(0, count, _VAD_ENCODER_BATCH)]))
            hidden = None if t == 0 else tuple(torch.stack([state[i][k] for i in active]).unsqueeze(0) for k in (0, 1))
            packed, (h, c) = lstm(torch.nn.utils.rnn.pack_sequence(encoded, enforce_sorted=False), hidden)
            state = {i: (h[0, k], c[0, k]) for k, i in enumerate(active)}  # hidden states come back in `active` order
            decoded = network.decoder.decoder(packed.data.unsqueeze(-1))  # dropout (inactive), ReLU, conv, sigmoid
            flat = decoded.reshape(len(packed.data), -1).mean(dim=1).numpy()
            # a PackedSequence holds step s of its (length-sorted) sequences at offsets[s] + rank
            offsets = np.concatenate([[0], np.cumsum(packed.batch_sizes.numpy())[:-1]])
            ranks = packed.unsorted_indices.numpy()
            for k, i in enumerate(active):
                probabilities[i][t:t + len(encoded[k])] = flat[offsets[:len(encoded[k])] + ranks[k]]
    return probabilities


def _frames(audio: np.ndarray, first: int, count: int, window: int, context: int) -> np.ndarray:
    """Network inputs of windows [first, first+count): each window with the `context` samples before it,
    zeros before the audio's start and after its end (as silero pads its last window)."""
    begin = first * window - context
    tape = np.zeros(context + count * window, dtype=np.float32)
    lo, hi = max(begin, 0), min(len(audio), (first + count) * window)
    tape[lo - begin:hi - begin] = audio[lo:hi]
    return np.lib.stride_tricks.sliding_window_view(tape, context + window)[::window].copy()


def speech_segments(audios: list[np.ndarray], sample_rate: int, threshold: float = 0.5) -> list[list[dict]]:
    """silero-vad speech segments ({"start", "end"} in samples) of each mono float32 audio, from its own
    `get_speech_timestamps_from_probs` with its defaults (250 ms min speech, 100 ms min silence, 30 ms pad)."""
    probabilities = speech_probabilities(audios, sample_rate)
    # imported only now: the first import of silero_vad sets torch to 1 thread for the whole process, and
    # _silero is the one place that imports it with the thread count restored
    _silero(sample_rate)
    from silero_vad import get_speech_timestamps_from_probs

    return [get_speech_timestamps_from_probs(p.tolist(), sampling_rate=sample_rate, threshold=threshold,
                                             audio_length_samples=len(a)) for p, a in zip(probabilities, audios)]


# ------------------------------------------------------------------------------------------------- output


def write_flac(pcm16: np.ndarray, sample_rate: int, audio_dir: Path) -> tuple[str, Path]:
    """Write 16-bit PCM into the content-addressed pool (once per content); return (hash, path)."""
    audio_hash = hashlib.sha256(memoryview(np.ascontiguousarray(pcm16))).hexdigest()
    path = Path(audio_dir) / audio_hash[:2] / f"{audio_hash}.flac"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # written in one directory of temporaries, named after this process: what a killed build leaves
        # there is found with one listing and deleted by the next publish (DatasetStore.remove_stale_temporaries)
        tmp = Path(audio_dir) / TEMP_DIR / temp_name(path.name)
        tmp.parent.mkdir(exist_ok=True)
        # encoded in memory, written by Python: a full disk is an OSError (ENOSPC) that says so, where libsndfile
        # writing the file itself reports only "System error"
        encoded = io.BytesIO()
        sf.write(encoded, pcm16, sample_rate, subtype="PCM_16", format="FLAC")
        try:
            tmp.write_bytes(encoded.getbuffer())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
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
