"""ITU-R BS.1770-4 integrated loudness (K-weighting, gated) and the peak-limited gain to a loudness target."""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.signal import sosfilt

from jstip.config import NormalizeConfig
from jstip.tasks.normalize.decode import _CHUNK, _PCM_SCALE

log = logging.getLogger(__name__)


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
