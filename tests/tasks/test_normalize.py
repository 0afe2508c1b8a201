"""Audio normalisation on real audio files written into tmp_path, with exact expectations."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pydantic
import pytest
import soundfile as sf
import soxr

from jstip.config import NormalizeConfig
from jstip.schemas import from_rows
from jstip.tasks.aligners.espeak import synthesize
from jstip.tasks.normalize import normalize_shard
from jstip.tasks.normalize.loudness import _k_weighting, integrated_loudness
from jstip.tasks.normalize.vad import speech_probabilities, speech_segments

RATE = 16000


def _utt(uid: str, path, start: float = 0.0, duration: float | None = None, channel: int | None = None) -> dict:
    return dict(utterance_id=uid, recording_id=uid, audio_path=str(path), start=start, duration=duration,
                channel=channel, text="hello there", source=f"m.jsonl:{uid}")


def _normalize(tmp_path, utts: list[dict], **config) -> tuple[dict, dict]:
    result = normalize_shard(from_rows("utterances", utts), tmp_path / "pool", NormalizeConfig(**config))
    rows = {r["utterance_id"]: r for r in result.normalized_audio.to_pylist()}
    quarantine = {r["utterance_id"]: r for r in result.quarantine.to_pylist()}
    assert len(rows) + len(quarantine) == len(utts) and not set(rows) & set(quarantine)
    return rows, quarantine


def _tone(rate: int, seconds: float, amplitude: float = 0.5, freq: float = 440.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)


def _speech(text: str) -> np.ndarray:
    """espeak-ng speech as int16 at 22.05 kHz."""
    return synthesize(text).samples


def test_decodes_downmixes_resamples_and_deduplicates(tmp_path):
    stereo = np.stack([_tone(44100, 1.0)] * 2, axis=1)
    sf.write(tmp_path / "a.wav", stereo, 44100, subtype="PCM_16")
    sf.write(tmp_path / "copy.wav", stereo, 44100, subtype="PCM_16")
    clipped = np.clip(_tone(44100, 1.0) * 6, -1, 1)
    sf.write(tmp_path / "clip.wav", clipped, 44100, subtype="FLOAT")
    pcm = np.random.default_rng(0).integers(-32768, 32768, RATE, dtype=np.int16)
    sf.write(tmp_path / "native.wav", pcm, RATE, subtype="PCM_16")

    rows, quarantine = _normalize(tmp_path, [
        _utt("a", tmp_path / "a.wav"), _utt("copy", tmp_path / "copy.wav"),
        _utt("half", tmp_path / "a.wav", start=0.25, duration=0.5), _utt("clip", tmp_path / "clip.wav"),
        _utt("native", tmp_path / "native.wav"),
    ], measure_speech=False)

    assert quarantine == {}
    assert rows["a"]["num_samples"] == 16000 and rows["a"]["duration"] == 1.0
    assert rows["half"]["num_samples"] == 8000
    assert (rows["a"]["orig_sampling_rate"], rows["a"]["orig_num_channels"]) == (44100, 2)
    assert rows["a"]["audio_hash"] == rows["copy"]["audio_hash"]  # identical audio, one file
    assert rows["a"]["flac_path"] == rows["copy"]["flac_path"]
    assert len(list((tmp_path / "pool").rglob("*.flac"))) == 4
    data, rate = sf.read(rows["a"]["flac_path"], dtype="float32")
    assert rate == 16000 and data.ndim == 1 and sf.info(rows["a"]["flac_path"]).subtype == "PCM_16"
    assert 20 * np.log10(np.sqrt(np.mean(data ** 2))) == pytest.approx(rows["a"]["rms_dbfs"], abs=1e-6)
    assert rows["a"]["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.02)
    assert rows["a"]["clipping_ratio"] == 0.0
    assert rows["clip"]["clipping_ratio"] == pytest.approx(np.mean(np.abs(clipped) >= 0.999), abs=1e-9)
    # 16-bit mono input at the target rate is stored bit for bit
    assert np.array_equal(sf.read(rows["native"]["flac_path"], dtype="int16")[0], pcm)
    # nothing asked for, nothing done
    assert rows["a"]["loudness_gain_db"] is None and rows["a"]["speech_ratio"] is None
    assert rows["a"]["trimmed_lead_s"] == rows["a"]["trimmed_trail_s"] == 0.0


def test_every_bad_input_ends_as_one_specific_quarantine_row(tmp_path):
    sf.write(tmp_path / "one_second.wav", _tone(RATE, 1.0), RATE, subtype="PCM_16")
    sf.write(tmp_path / "stereo.wav", np.stack([_tone(RATE, 1.0)] * 2, axis=1), RATE, subtype="PCM_16")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....not audio at all")
    (tmp_path / "zero_bytes.wav").write_bytes(b"")
    sf.write(tmp_path / "no_samples.wav", np.zeros(0, np.int16), RATE, subtype="PCM_16")
    for name, bad in (("nan", np.nan), ("inf", -np.inf)):
        samples = _tone(RATE, 1.0).astype(np.float32)
        samples[8000] = bad
        sf.write(tmp_path / f"{name}.wav", samples, RATE, subtype="FLOAT")
    sf.write(tmp_path / "whole.flac", np.random.default_rng(1).normal(0, 0.1, 4 * RATE), RATE, subtype="PCM_16")
    flac = (tmp_path / "whole.flac").read_bytes()
    (tmp_path / "truncated.flac").write_bytes(flac[:len(flac) // 2])
    sf.write(tmp_path / "whole.mp3", _tone(RATE, 4.0), RATE, format="MP3", subtype="MPEG_LAYER_III")
    mp3 = (tmp_path / "whole.mp3").read_bytes()
    (tmp_path / "truncated.mp3").write_bytes(mp3[:len(mp3) // 2])  # its header still says 4 s

    one = tmp_path / "one_second.wav"
    rows, quarantine = _normalize(tmp_path, [
        _utt("corrupt", tmp_path / "corrupt.wav"), _utt("zero_bytes", tmp_path / "zero_bytes.wav"),
        _utt("no_samples", tmp_path / "no_samples.wav"), _utt("nan", tmp_path / "nan.wav"),
        _utt("inf", tmp_path / "inf.wav"), _utt("missing", tmp_path / "missing.wav"),
        _utt("truncated", tmp_path / "truncated.flac"), _utt("truncated_mp3", tmp_path / "truncated.mp3"),
        _utt("after_end", one, start=1.5, duration=0.5), _utt("past_end", one, start=0.5, duration=0.7),
        _utt("before_start", one, start=-0.5, duration=1.0), _utt("empty_range", one, start=0.5, duration=0.0),
        _utt("no_channel", tmp_path / "stereo.wav", channel=2),
        _utt("within_tolerance", one, start=0.5, duration=0.55),  # 50 ms past the end: cut at the end, kept
        _utt("ok", one),
    ], measure_speech=False)

    checks = {uid: row["check_name"] for uid, row in quarantine.items()}
    assert checks == {
        "corrupt": "audio_unreadable", "zero_bytes": "audio_empty", "no_samples": "audio_empty",
        "nan": "audio_nonfinite", "inf": "audio_nonfinite", "missing": "audio_not_found",
        "truncated": "audio_unreadable", "truncated_mp3": "audio_truncated",
        "after_end": "audio_out_of_range", "past_end": "audio_out_of_range",
        "before_start": "audio_out_of_range", "empty_range": "audio_empty", "no_channel": "audio_channel",
    }
    for uid, row in quarantine.items():
        assert row["stage"] == "normalize" and row["source"] == f"m.jsonl:{uid}"
        assert row["reason"].startswith(f"m.jsonl:{uid}: ") and str(tmp_path) in row["reason"], row["reason"]
    assert "the first at 0.500 s" in quarantine["nan"]["reason"]
    assert quarantine["past_end"]["value"] == "0.500-1.200" and quarantine["past_end"]["threshold"] == "0.000-1.000"
    assert "(0 bytes)" in quarantine["zero_bytes"]["reason"]
    assert sorted(rows) == ["ok", "within_tolerance"]
    assert rows["within_tolerance"]["num_samples"] == 8000


@pytest.mark.parametrize("name, rate, channels, fmt, subtype", [
    ("8k.wav", 8000, 1, "WAV", "PCM_16"),
    ("48k_stereo.flac", 48000, 2, "FLAC", "PCM_24"),
    ("44k1_6ch.wav", 44100, 6, "WAV", "FLOAT"),
    ("22k.ogg", 22050, 1, "OGG", "VORBIS"),
    ("24k.mp3", 24000, 1, "MP3", "MPEG_LAYER_III"),
])
def test_any_rate_and_channel_layout_becomes_16k_mono(tmp_path, name, rate, channels, fmt, subtype):
    samples = np.repeat(_tone(rate, 2.0)[:, None], channels, axis=1)
    sf.write(tmp_path / name, samples, rate, format=fmt, subtype=subtype)
    rows, _ = _normalize(tmp_path, [_utt("u", tmp_path / name, start=0.5, duration=1.25)], measure_speech=False)
    row = rows["u"]
    assert (row["orig_sampling_rate"], row["orig_num_channels"], row["sampling_rate"]) == (rate, channels, RATE)
    assert row["num_samples"] == 20000
    tolerance = 0.5 if fmt in ("OGG", "MP3") else 0.02  # lossy codecs change the level a little
    assert row["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=tolerance)


def test_channel_selects_one_channel_and_none_downmixes(tmp_path):
    left = _tone(RATE, 1.0, amplitude=0.5)
    samples = np.stack([left, np.zeros_like(left)], axis=1)
    sf.write(tmp_path / "lr.wav", samples, RATE, subtype="PCM_16")
    rows, _ = _normalize(tmp_path, [_utt("mix", tmp_path / "lr.wav"), _utt("left", tmp_path / "lr.wav", channel=0),
                                    _utt("right", tmp_path / "lr.wav", channel=1)], measure_speech=False)
    tone_rms = 20 * np.log10(0.5 / np.sqrt(2))
    assert rows["left"]["rms_dbfs"] == pytest.approx(tone_rms, abs=0.01)
    assert rows["mix"]["rms_dbfs"] == pytest.approx(tone_rms - 20 * np.log10(2), abs=0.01)
    assert rows["right"]["rms_dbfs"] == -200.0 and rows["right"]["peak_dbfs"] == -200.0


def test_dc_offset_is_the_mean_input_sample_as_a_fraction_of_full_scale(tmp_path):
    tone = np.round(_tone(RATE, 1.0, amplitude=0.25) * 32768).astype(np.int16)
    mono = tone + np.int16(4096)  # +0.125 of full scale
    sf.write(tmp_path / "mono.wav", mono, 48000, subtype="PCM_16")
    stereo = np.stack([tone + np.int16(4096), tone - np.int16(8192)], axis=1)  # +0.125, -0.25
    sf.write(tmp_path / "stereo.wav", stereo, RATE, subtype="PCM_16")
    rows, _ = _normalize(tmp_path, [_utt("mono", tmp_path / "mono.wav"), _utt("stereo", tmp_path / "stereo.wav"),
                                    _utt("right", tmp_path / "stereo.wav", channel=1)], measure_speech=False)
    assert rows["mono"]["dc_offset"] == pytest.approx(mono.mean() / 32768, abs=1e-12)
    assert rows["mono"]["dc_offset"] == pytest.approx(0.125, abs=1e-4)
    assert rows["stereo"]["dc_offset"] == pytest.approx(stereo.mean() / 32768, abs=1e-12)
    assert rows["right"]["dc_offset"] == pytest.approx(stereo[:, 1].mean() / 32768, abs=1e-12)


def test_loudness_meter_matches_bs1770():
    # BS.1770-4 Table 1 and 2 (48 kHz): the K-weighting biquads
    table = [[1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241, 0.73248077421585],
             [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621]]
    np.testing.assert_allclose(_k_weighting(48000), table, atol=1e-8)
    # a full-scale 997 Hz sine on one channel reads -3.01 LUFS (BS.1770-4, section 2.1)
    assert integrated_loudness(_tone(48000, 3.0, 1.0, 997.0), 48000) == pytest.approx(-3.01, abs=0.01)
    assert integrated_loudness(np.zeros(RATE * 2, np.float32), RATE) is None  # every block under -70 LUFS
    assert integrated_loudness(_tone(RATE, 0.39), RATE) is None  # shorter than one 400 ms block


def test_loudness_normalisation_hits_the_target_and_never_clips(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "noise.wav", rng.normal(0, 0.01, 3 * 44100), 44100, subtype="PCM_16")  # ~ -40 LUFS
    sf.write(tmp_path / "tone.wav", _tone(RATE, 3.0, amplitude=0.9, freq=1000.0), RATE, subtype="PCM_16")
    spiky = rng.normal(0, 0.003, 3 * RATE)
    spiky[RATE] = 0.9  # one click: the gain to -16 LUFS would lift it far past full scale
    sf.write(tmp_path / "spiky.wav", spiky, RATE, subtype="PCM_16")
    sf.write(tmp_path / "silence.wav", np.zeros(2 * RATE, np.int16), RATE, subtype="PCM_16")
    rows, _ = _normalize(tmp_path, [_utt(u, tmp_path / f"{u}.wav") for u in ("noise", "tone", "spiky", "silence")],
                         loudness_lufs=-16.0, measure_speech=False)

    for uid in ("noise", "tone"):
        stored = sf.read(rows[uid]["flac_path"], dtype="float32")[0]
        assert integrated_loudness(stored, RATE) == pytest.approx(-16.0, abs=0.5)
        assert rows[uid]["loudness_lufs"] == pytest.approx(-16.0, abs=0.01)
        assert rows[uid]["peak_dbfs"] <= -1.0 + 1e-3
    assert rows["noise"]["loudness_gain_db"] > 20 and rows["tone"]["loudness_gain_db"] < 0

    spiked = sf.read(rows["spiky"]["flac_path"], dtype="int16")[0]
    assert rows["spiky"]["peak_dbfs"] == pytest.approx(-1.0, abs=0.01)  # limited by max_peak_dbfs
    assert np.abs(spiked.astype(np.int32)).max() < 32767
    assert rows["spiky"]["loudness_lufs"] < -16.5
    assert rows["spiky"]["loudness_gain_db"] == pytest.approx(-1.0 - 20 * np.log10(0.9), abs=0.01)

    assert rows["silence"]["loudness_lufs"] is None and rows["silence"]["loudness_gain_db"] is None
    assert not sf.read(rows["silence"]["flac_path"], dtype="int16")[0].any()


def _edges(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """Seconds of silence before the first and after the last audible sample."""
    loud = np.flatnonzero(np.abs(samples.astype(np.float64)) > 0.01 * np.abs(samples).max())
    return loud[0] / rate, (len(samples) - 1 - loud[-1]) / rate


def test_trim_cuts_leading_and_trailing_silence_around_speech_and_measures_speech(tmp_path):
    speech = _speech("The patient was given metformin twice a day for three weeks.")
    second = np.zeros(22050, np.int16)
    padded = np.concatenate([second, speech, second])
    sf.write(tmp_path / "padded.wav", padded, 22050, subtype="PCM_16")
    sf.write(tmp_path / "speech.wav", speech, 22050, subtype="PCM_16")
    sf.write(tmp_path / "silence.wav", np.zeros(3 * RATE, np.int16), RATE, subtype="PCM_16")
    pad = 0.1
    rows, _ = _normalize(tmp_path, [_utt(u, tmp_path / f"{u}.wav") for u in ("padded", "speech", "silence")],
                         trim_silence=True, trim_padding_s=pad, loudness_lufs=-23.0)

    lead, trail = _edges(padded, 22050)
    row = rows["padded"]
    kept_lead, kept_trail = lead - row["trimmed_lead_s"], trail - row["trimmed_trail_s"]
    assert pad - 0.05 <= kept_lead <= pad + 0.15, kept_lead  # silero's segment edges are within ~0.1 s
    assert pad - 0.05 <= kept_trail <= pad + 0.15, kept_trail
    stored = sf.read(row["flac_path"], dtype="int16")[0]
    assert len(stored) == row["num_samples"] == round(len(padded) * RATE / 22050) - round(
        (row["trimmed_lead_s"] + row["trimmed_trail_s"]) * RATE)
    stored_lead, stored_trail = _edges(stored, RATE)
    assert stored_lead == pytest.approx(kept_lead, abs=0.01) and stored_trail == pytest.approx(kept_trail, abs=0.01)
    assert row["loudness_lufs"] == pytest.approx(-23.0, abs=0.01)  # on the trimmed audio

    assert rows["speech"]["speech_ratio"] > 0.9 and row["speech_ratio"] > 0.9
    # all silence: kept whole (nothing to trim to), a speech ratio of 0 tells the checks
    assert rows["silence"]["speech_ratio"] == 0.0 and rows["silence"]["num_samples"] == 3 * RATE
    assert rows["silence"]["trimmed_lead_s"] == rows["silence"]["trimmed_trail_s"] == 0.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # silero's loader
@pytest.mark.parametrize("rate", [16000, 8000])
def test_batched_speech_detection_matches_silero_one_window_at_a_time(rate):
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    texts = ["Hello there.", "Take one tablet of metformin with breakfast, and another one with dinner.",
             "The results came back normal."]
    gap = np.zeros(rate // 2, np.float32)
    audios = [np.concatenate([gap, soxr.resample(_speech(t).astype(np.float32) / 32768, 22050, rate), gap])
              for t in texts]
    model = load_silero_vad()
    window = 512 if rate == 16000 else 256
    for audio, probabilities in zip(audios, speech_probabilities(audios, rate)):
        model.reset_states()
        one_by_one = [model(torch.from_numpy(np.pad(audio[i:i + window], (0, max(0, i + window - len(audio))))),
                            rate).item() for i in range(0, len(audio), window)]
        np.testing.assert_allclose(probabilities, one_by_one, atol=1e-4)
    expected = [get_speech_timestamps(a, model, sampling_rate=rate) for a in audios]
    assert speech_segments(audios, rate) == expected
    assert all(len(segments) >= 1 for segments in expected)


def test_speech_probabilities_are_the_same_when_time_is_cut_into_chunks(monkeypatch):
    from jstip.tasks.normalize import vad as normalize

    audios = [soxr.resample(_speech(t).astype(np.float32) / 32768, 22050, RATE)
              for t in ("Hello there, how are you today?", "Fine, thanks.")]
    whole = speech_probabilities(audios, RATE)
    monkeypatch.setattr(normalize, "_VAD_TIME_CHUNK", 7)  # the LSTM state is carried across chunks
    monkeypatch.setattr(normalize, "_VAD_ENCODER_BATCH", 5)
    for chunked, unchunked in zip(speech_probabilities(audios, RATE), whole):
        np.testing.assert_allclose(chunked, unchunked, atol=1e-5)


def test_a_two_hour_file_is_decoded_in_blocks(tmp_path):
    hours2 = 2 * 3600
    minute = np.round(_tone(8000, 60.0, 0.25) * 32767).astype(np.int16)
    with sf.SoundFile(tmp_path / "long.wav", "w", 8000, 1, subtype="PCM_16") as f:
        for _ in range(hours2 // 60):
            f.write(minute)
    tracemalloc.start()
    try:
        rows, _ = _normalize(tmp_path, [_utt("long", tmp_path / "long.wav")], measure_speech=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows["long"]["num_samples"] == hours2 * RATE
    # the 16 kHz float32 result (460 MB) and its int16 copy (230 MB), plus blocks: never a whole-file
    # float64 or input-rate copy
    assert peak < (4 + 2) * hours2 * RATE + 100e6, peak / 1e6


def test_speech_detection_needs_a_silero_rate():
    with pytest.raises(pydantic.ValidationError, match="silero-vad"):
        NormalizeConfig(sample_rate=22050)
    assert NormalizeConfig(sample_rate=22050, measure_speech=False).sample_rate == 22050


def test_voice_activity_detection_leaves_torch_thread_count_alone():
    """Importing silero_vad sets torch to one thread process-wide; a build followed by training in the same
    process must not train on one thread. Run in a fresh interpreter: the import happens once per process."""
    import subprocess
    import sys

    code = ("import torch, numpy as np\ntorch.set_num_threads(2)\n"
            "from jstip.tasks.normalize.vad import speech_segments\n"
            "speech_segments([np.zeros(16000, np.float32)], 16000)\nprint(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "2"
