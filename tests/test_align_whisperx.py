"""WhisperX alignment plumbing on real (synthesized) speech, with a tiny wav2vec2 CTC model built here.

No pretrained wav2vec2 weights can be fetched offline, so the model has random weights: its word times are
meaningless and accuracy is not tested. What is tested is everything around the model: the real
`whisperx.alignment` imported without torchaudio and run without NLTK data, one row per transcript token
(multi-word spoken forms folded back), spans valid and inside the audio, failures raised with reasons, and
the whole path from a FLAC through `align_shard` and the aligner registry.
"""

from __future__ import annotations

import json
import math
import re
import sys

import nltk
import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import soxr

from jstip.config import AlignConfig
from jstip.tasks.align import AlignmentFailed, align_shard
from jstip.tasks.align_whisperx import (AlignModelError, WhisperXAligner, _token_timings, spoken_words)
from jstip.tasks.espeak import synthesize
from jstip.tasks.text import split_words

RATE = 16000
VOCAB = ["<pad>", "<unk>", "|", "'", *"abcdefghijklmnopqrstuvwxyz"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A ~170 KB Wav2Vec2ForCTC + Wav2Vec2Processor with a letter vocabulary, random weights, saved locally."""
    import torch
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2Processor)

    path = tmp_path_factory.mktemp("wav2vec2-tiny")
    (path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(VOCAB)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True,
                                        return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(path)
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=len(VOCAB), pad_token_id=0, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, conv_dim=(32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),  # wav2vec2's real 20 ms frame rate, with tiny widths
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    Wav2Vec2ForCTC(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def aligner(model_dir):
    return WhisperXAligner(AlignConfig(aligner="whisperx", model=str(model_dir)))


@pytest.fixture
def no_nltk_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("whisperx tried to download NLTK data")

    monkeypatch.setattr(nltk, "download", refuse)


def _speech(text: str, voice: str = "en-us") -> np.ndarray:
    syn = synthesize(text, voice=voice)
    audio = soxr.resample(syn.samples.astype(np.float32) / 32768.0, syn.sample_rate, RATE)
    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


def _assert_valid(words, text: str, duration: float) -> None:
    assert [w.word_index for w in words] == list(range(len(split_words(text))))
    for w in words:
        assert type(w.start) is float and type(w.end) is float and type(w.score) is float
        assert 0.0 <= w.start < w.end <= duration
        assert math.isfinite(w.score) and 0.0 <= w.score <= 1.0
    starts = [w.start for w in words]
    assert starts == sorted(starts)


# ------------------------------------------------------------------------------------------ shims


def test_whisperx_is_imported_without_torchaudio_and_left_unpatched(aligner):
    import whisperx.alignment

    assert "torchaudio" not in sys.modules  # the stub lived only during the import
    stub = whisperx.alignment.torchaudio
    assert stub.__spec__ is not None and stub.pipelines.__all__ == []
    assert aligner.dictionary["|"] == 2 and aligner.dictionary["a"] == 4  # the local model's own vocabulary
    assert whisperx.alignment.nltk_load is nltk.data.load  # the punkt stand-in is only there during align()


# -------------------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("text", [
    "The patient takes $250 of metformin every morning.",
    "The follow-up is on March 3rd; Dr. Nguyen's façade held.",
])
def test_every_token_of_real_speech_gets_one_valid_span(aligner, no_nltk_download, text):
    pcm = _speech(text)
    result = aligner.align(text, pcm, RATE)
    _assert_valid(result.words, text, len(pcm) / RATE)
    assert result.attempts == 1


def test_audio_at_another_rate_is_resampled(aligner, no_nltk_download):
    text = "Blood pressure was 142 over 88."
    syn = synthesize(text)
    result = aligner.align(text, syn.samples, syn.sample_rate)
    _assert_valid(result.words, text, len(syn.samples) / syn.sample_rate)


def test_tokens_become_spoken_words_in_the_models_letters(aligner):
    words, owners = spoken_words("$250 3rd Façade, don't follow-up", aligner.dictionary)
    assert words[owners.index(1)] == "third"
    assert "facade" in words and "don't" in words and words[-2:] == ["follow", "up"]
    assert owners.count(0) >= 3  # "$250": two hundred fifty (dollars)
    assert owners == sorted(owners) and set(owners) == set(range(5))
    assert all(set(w) <= set(VOCAB) for w in words)

    no_apostrophe = {c: i for i, c in enumerate(VOCAB) if c != "'"}
    assert spoken_words("don't", no_apostrophe)[0] == ["dont"]  # a character the model cannot hear is dropped


def test_multi_word_token_maps_back_to_one_span():
    # whisperx output (numpy floats, rounded to ms) for "two hundred fifty third": tokens "250", "3rd"
    aligned = [dict(word="two", start=np.float64(0.1), end=np.float64(0.3), score=np.float64(0.5)),
               dict(word="hundred", start=np.float64(0.3), end=np.float64(0.7), score=np.float64(0.2)),
               dict(word="fifty", start=np.float64(0.72), end=np.float64(1.0), score=np.float64(0.8)),
               dict(word="third", start=np.float64(1.1), end=np.float64(1.5004), score=np.float64(0.9))]
    first, second = _token_timings(aligned, [0, 0, 0, 1], 2, duration=1.5)
    assert (first.word_index, first.start, first.end) == (0, 0.1, 1.0)
    assert first.score == pytest.approx((0.5 * 3 + 0.2 * 7 + 0.8 * 5) / 15)  # mean over characters
    assert (second.start, second.end) == (1.1, 1.5)  # clipped to the audio
    assert all(type(x) is float for t in (first, second) for x in (t.start, t.end, t.score))


def test_audio_over_30_s_is_refused(aligner):
    with pytest.raises(AlignmentFailed) as e:
        aligner.align("hello there", np.zeros(31 * RATE, dtype=np.int16), RATE)
    assert e.value.check == "too_long" and "31.00 s" in e.value.reason


def test_words_whisperx_cannot_place_fail_with_its_reason(aligner, no_nltk_download):
    noise = (np.random.default_rng(0).standard_normal(800) * 3000).astype(np.int16)  # 50 ms: ~2 frames
    with pytest.raises(AlignmentFailed) as e:
        aligner.align("far too many words for fifty milliseconds", noise, RATE)
    assert e.value.check == "words_missing"
    assert "aligned 0 of 7 spoken words" in e.value.reason and "backtrack failed" in e.value.reason


def test_a_token_left_without_words_fails(aligner, monkeypatch):
    from jstip.tasks import align_whisperx

    monkeypatch.setattr(align_whisperx, "preferred_words", lambda text: (["hello", "|"], [0, 1]))
    with pytest.raises(AlignmentFailed) as e:  # "|" is the model's word delimiter, never a character to align
        aligner.align("hello |x", np.zeros(RATE, dtype=np.int16), RATE)
    assert e.value.check == "no_pronunciation" and "'|x'" in e.value.reason


# ------------------------------------------------------------------------------------ end to end


def test_align_shard_through_the_registry(model_dir, tmp_path, no_nltk_download):
    text = "Start 250 milligrams on the 3rd."
    pcm = _speech(text)
    too_long = np.concatenate([pcm, np.zeros(30 * RATE, dtype=np.int16)])
    utterances, audio = [], []
    for utt_id, samples in (("u1", pcm), ("u2", too_long)):
        path = tmp_path / f"{utt_id}.flac"
        sf.write(path, samples, RATE, subtype="PCM_16", format="FLAC")
        utterances.append(dict(utterance_id=utt_id, text=text, source=f"test.jsonl:{utt_id[1]}"))
        audio.append(dict(utterance_id=utt_id, flac_path=str(path)))
    # Random weights put every word near the start, so the speech-coverage checks (tested with real
    # alignments in test_align.py) are switched off: this test is about the path, not the times.
    config = AlignConfig(aligner="whisperx", model=str(model_dir), max_untranscribed_speech_fraction=1.0,
                         max_silent_word_fraction=1.0)
    result = align_shard(pa.Table.from_pylist(utterances), pa.Table.from_pylist(audio), config)

    assert result.status.column("status").to_pylist() == ["aligned", "failed"]
    rows = result.word_alignments.to_pylist()
    assert [r["word"] for r in rows] == split_words(text)  # "250" and "3rd": one row each
    assert {r["aligner"] for r in rows} == {"whisperx"} and {r["utterance_id"] for r in rows} == {"u1"}
    assert all(0 <= r["start"] < r["end"] <= len(pcm) / RATE for r in rows)
    (quarantined,) = result.quarantine.to_pylist()
    assert quarantined["utterance_id"] == "u2" and quarantined["check_name"] == "too_long"
    assert "whisperx alignment failed (too_long)" in quarantined["reason"]


def test_a_bad_model_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(AlignModelError, match=f"{re.escape(repr(str(missing)))}.*no such directory"):
        WhisperXAligner(AlignConfig(aligner="whisperx", model=str(missing)))
    not_a_model = re.escape(repr(str(tmp_path)))
    with pytest.raises(AlignModelError, match=f"{not_a_model}.*cannot load.*preprocessor_config.json"):
        WhisperXAligner(AlignConfig(aligner="whisperx", model=str(tmp_path)))


def test_transcript_verification_compares_the_models_greedy_transcript(model_dir, no_nltk_download):
    """align.verify.max_ctc_cer: the CER of the model's own greedy transcript against the text. Random weights
    transcribe nothing like the text, so a limit of 0 quarantines with the measured CER; no limit aligns."""
    text = "Start 250 milligrams on the 3rd."
    pcm = _speech(text)
    strict = WhisperXAligner(AlignConfig(aligner="whisperx", model=str(model_dir), verify={"max_ctc_cer": 0.0}))
    with pytest.raises(AlignmentFailed) as info:
        strict.align(text, pcm, RATE)
    assert info.value.check == "transcript_mismatch" and info.value.threshold == "0"
    assert 0 < float(info.value.value) and "the model's own transcript" in info.value.reason
    loose = WhisperXAligner(AlignConfig(aligner="whisperx", model=str(model_dir), verify={"max_ctc_cer": 1e9}))
    assert len(loose.align(text, pcm, RATE).words) == len(split_words(text))


def test_frame_times_sit_between_wav2vec2_frame_centres():
    from jstip.tasks.align_whisperx import _FrameGeometry

    class Config:  # wav2vec2 base: 400-sample receptive field, 320-sample stride
        conv_kernel, conv_stride = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)

    class Model:
        config = Config()

    geometry = _FrameGeometry.of(Model(), 16000)  # 1 s: floor((16000 - 400) / 320) + 1 = 49 frames
    assert (geometry.stride_s, geometry.offset_s) == (0.02, 0.0025)
    assert geometry.whisperx_frame_s == pytest.approx(1 / 49)
    # whisperx's boundary 10 (10 x 1/49 s, rounded to ms) -> midway between the centres of frames 9 and 10
    assert geometry.boundary(round(10 / 49, 3)) == pytest.approx(0.2025)
