"""Speech energy, and the checks every backend's output goes through, whatever the aligner.

Every word comes back, in order, with start < end inside the audio (`check_timings`); the audio holds speech
at all (`no_speech`); no stretch of speech is left outside the words (`untranscribed_speech`) and the words do
not lie on silence (`words_in_silence`). A forced aligner finds *some* path through nearly anything: these
energy checks catch silence and gross mismatches only (a transcript of about the right length for the audio
passes them); transcript verification is what compares the words (`pocketsphinx`, `verify`).
"""

from __future__ import annotations

import numpy as np

from jstip.config import AlignConfig
from jstip.tasks.aligners.base import AlignmentFailed, WordTiming

HOP_S, WINDOW_S = 0.010, 0.025  # energy frames: a 25 ms window every 10 ms


_ENERGY_BLOCK = 4096  # frames per block: float64 copies of 25 ms windows stay ~80 MB whatever the length


def frame_energy_db(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mean power (dBFS) of each 10 ms frame's 25 ms window: frame k covers samples [k*hop, k*hop + 25 ms)."""
    hop, window = int(round(HOP_S * rate)), int(round(WINDOW_S * rate))
    x = np.asarray(samples)
    if len(x) < window:
        x = np.pad(x, (0, window - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, window)[::hop]  # a view: no copy of the audio
    energy_db = np.empty(len(frames))
    for i in range(0, len(frames), _ENERGY_BLOCK):
        block = frames[i:i + _ENERGY_BLOCK].astype(np.float64) / 32768.0
        energy_db[i:i + _ENERGY_BLOCK] = 10.0 * np.log10(np.mean(block ** 2, axis=1) + 1e-12)
    return energy_db


def speech_frames(samples: np.ndarray, rate: int, config: AlignConfig,
                  energy_db: np.ndarray | None = None) -> np.ndarray:
    """Which 10 ms frames hold speech-level energy; raises AlignmentFailed("no_speech") when none can.

    Frames as in `frame_energy_db` (pass its result as `energy_db` when already computed). The threshold
    is relative to the utterance's own levels (see AlignConfig), so it needs no calibration per corpus,
    only speech louder than its background.
    """
    if energy_db is None:
        energy_db = frame_energy_db(samples, rate)
    floor, loud = np.percentile(energy_db, [10, 95])
    if loud < config.min_speech_level_dbfs or loud - floor < config.min_speech_range_db:
        raise AlignmentFailed(
            "no_speech", f"audio holds no speech: loud level {loud:.1f} dBFS (minimum "
            f"{config.min_speech_level_dbfs:g}), {loud - floor:.1f} dB above its floor (minimum "
            f"{config.min_speech_range_db:g})", value=f"{loud:.1f} dBFS / {loud - floor:.1f} dB",
            threshold=f"{config.min_speech_level_dbfs:g} dBFS / {config.min_speech_range_db:g} dB")
    return energy_db > floor + 0.3 * (loud - floor)


def check_timings(words: list[WordTiming], n_words: int, duration: float) -> None:
    """Whatever the aligner, the result must be every word, in order, inside the audio."""
    if [w.word_index for w in words] != list(range(n_words)):
        got = sorted({w.word_index for w in words})
        raise AlignmentFailed("words_missing", f"aligner returned {len(words)} word(s) with indices {got[:10]}"
                              f"{'...' if len(got) > 10 else ''}; expected 0..{n_words - 1}",
                              value=str(len(got)), threshold=str(n_words))
    starts = np.array([w.start for w in words])
    ends = np.array([w.end for w in words])
    if not (np.all(starts < ends) and np.all(np.diff(starts) >= 0) and starts[0] >= 0
            and ends[-1] <= duration + 1e-9):
        raise AlignmentFailed("align_invalid", "word spans are empty, out of order or outside the audio "
                              f"({duration:.3f} s)")


def check_against_speech(words: list[WordTiming], speech: np.ndarray, config: AlignConfig) -> None:
    """Catch what a forced aligner cannot: speech left outside every word, or words laid over silence."""
    centres = (np.arange(len(speech)) * HOP_S) + WINDOW_S / 2
    in_word = np.zeros(len(speech), dtype=bool)
    starts = np.searchsorted(centres, [w.start for w in words])
    ends = np.searchsorted(centres, [w.end for w in words])
    for a, b in zip(starts, ends):
        in_word[a:b] = True
    untranscribed = int(np.count_nonzero(speech & ~in_word))
    seconds, fraction = untranscribed * HOP_S, untranscribed / max(int(np.count_nonzero(speech)), 1)
    if seconds > config.max_untranscribed_speech_s and fraction > config.max_untranscribed_speech_fraction:
        raise AlignmentFailed(
            "untranscribed_speech", f"{seconds:.2f} s ({fraction:.0%}) of the speech lies outside every aligned "
            "word: the transcript is missing words or belongs to other audio",
            value=f"{seconds:.2f} s / {fraction:.2f}",
            threshold=f"{config.max_untranscribed_speech_s:g} s / {config.max_untranscribed_speech_fraction:g}")
    silent = np.count_nonzero(in_word & ~speech) / max(int(np.count_nonzero(in_word)), 1)
    if silent > config.max_silent_word_fraction:
        raise AlignmentFailed(
            "words_in_silence", f"{silent:.0%} of the aligned words' frames are silence: the transcript does "
            "not match the audio", value=f"{silent:.2f}", threshold=f"{config.max_silent_word_fraction:g}")

