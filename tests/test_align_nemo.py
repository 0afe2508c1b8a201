"""The NeMo CTC aligner's plumbing, on real (synthesized) speech and tiny models built here.

No pretrained NeMo weights can be fetched offline, so the models are random: a char-level EncDecCTCModel,
a BPE EncDecCTCModelBPE and a hybrid RNNT-CTC BPE model (70-340 KB .nemo files, built from config dicts
and restored through NemoAligner like any user's model). Random weights say nothing about accuracy; these
tests check the STRUCTURE of what comes back: every word, in order, inside the audio, numbers mapped back
to one row, batches equal to one-at-a-time, failures named, and align_shard end to end.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import soxr

from jstip.config import AlignConfig
from jstip.tasks.align import ALIGN_STATUS, AlignmentFailed, align_shard
from jstip.tasks.espeak import synthesize
from jstip.tasks.text import split_words

pytest.importorskip("nemo.collections.asr")

RATE = 16000
SENTENCES = [
    "The patient takes 250 milligrams of metformin every morning.",
    "Hello world, it's fine!",
    "Blood pressure was 142 over 88.",
]
LABELS = list("abcdefghijklmnopqrstuvwxyz' ")


def _preprocessor() -> dict:
    return {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "sample_rate": RATE,
            "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01, "features": 32, "n_fft": 512}


def _encoder(strides: list[int]) -> dict:
    """A two-block separable ConvASR (QuartzNet-style) encoder: a few thousand random weights."""
    return {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 32, "activation": "relu",
            "conv_mask": True, "jasper": [
                {"filters": 32, "repeat": 1, "kernel": [k], "stride": [s], "dilation": [1], "dropout": 0.0,
                 "residual": False, "separable": True} for k, s in zip((11, 5), strides)]}


@pytest.fixture(scope="module")
def char_model(tmp_path_factory) -> str:
    """A random char-level EncDecCTCModel, 20 ms frames (10 ms hop x stride 2), saved as a .nemo file."""
    from omegaconf import OmegaConf
    from nemo.collections.asr.models import EncDecCTCModel

    cfg = OmegaConf.create({
        "sample_rate": RATE, "labels": LABELS, "preprocessor": _preprocessor(), "encoder": _encoder([2, 1]),
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 32,
                    "num_classes": len(LABELS), "vocabulary": LABELS}})
    path = tmp_path_factory.mktemp("nemo") / "tiny_char.nemo"
    EncDecCTCModel(cfg=cfg).save_to(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A SentencePiece BPE tokenizer of 48 pieces, trained on the test sentences (milliseconds)."""
    import sentencepiece as spm

    tok = tmp_path_factory.mktemp("tokenizer")
    (tok / "corpus.txt").write_text(" ".join(SENTENCES).lower() + "\ntwo hundred fifty one forty eighty eight\n")
    spm.SentencePieceTrainer.train(input=str(tok / "corpus.txt"), model_prefix=str(tok / "tokenizer"),
                                   vocab_size=48, model_type="bpe", character_coverage=1.0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model"))
    # NeMo's BPE tokenizer setup looks for vocab.txt beside tokenizer.model
    (tok / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))
    return str(tok)


def _ctc_head() -> dict:
    return {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 32, "num_classes": -1,
            "vocabulary": []}


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory, tokenizer_dir) -> str:
    """A random EncDecCTCModelBPE, 40 ms frames (stride 2 x 2)."""
    from omegaconf import OmegaConf
    from nemo.collections.asr.models import EncDecCTCModelBPE

    cfg = OmegaConf.create({"sample_rate": RATE, "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
                            "preprocessor": _preprocessor(), "encoder": _encoder([2, 2]), "decoder": _ctc_head()})
    path = tmp_path_factory.mktemp("nemo") / "tiny_bpe.nemo"
    EncDecCTCModelBPE(cfg=cfg).save_to(str(path))
    return str(path)


@pytest.fixture(scope="module")
def hybrid_model(tmp_path_factory, tokenizer_dir) -> str:
    """A random hybrid RNNT-CTC BPE model (FastConformer-hybrid layout, tiny): aligned with its CTC head."""
    from omegaconf import OmegaConf
    from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel

    cfg = OmegaConf.create({
        "sample_rate": RATE, "model_defaults": {"enc_hidden": 32, "pred_hidden": 16, "joint_hidden": 16},
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"}, "preprocessor": _preprocessor(),
        "encoder": _encoder([2, 1]),
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "vocab_size": -1,
                    "prednet": {"pred_hidden": 16, "pred_rnn_layers": 1}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "num_classes": -1, "vocabulary": [],
                  "jointnet": {"joint_hidden": 16, "activation": "relu", "encoder_hidden": 32, "pred_hidden": 16}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 5}},
        "aux_ctc": {"ctc_loss_weight": 0.3, "decoder": _ctc_head(), "decoding": {"strategy": "greedy", "greedy": {}}}})
    path = tmp_path_factory.mktemp("nemo") / "tiny_hybrid.nemo"
    EncDecHybridRNNTCTCBPEModel(cfg=cfg).save_to(str(path))
    return str(path)


@pytest.fixture(scope="module")
def aligner(char_model):
    from jstip.tasks.align_nemo import NemoAligner

    return NemoAligner(AlignConfig(aligner="nemo", model=char_model, batch_size=2))


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    """16 kHz int16 speech for each of SENTENCES."""
    out = []
    for text in SENTENCES:
        syn = synthesize(text)
        audio = soxr.resample(syn.samples.astype(np.float32) / 32768.0, syn.sample_rate, RATE)
        out.append((np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16))
    return out


def _assert_structure(words, text: str, duration: float) -> None:
    assert [w.word_index for w in words] == list(range(len(split_words(text))))
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert all(0.0 <= w.start < w.end <= duration for w in words)
    assert all(math.isfinite(w.score) and -100.0 <= w.score <= 0.0 for w in words)


def test_model_words_map_expansions_back_to_tokens(aligner):
    words, spans = aligner.model_words("Takes 250 pills, don't  Xarelto!")
    assert words == ["takes", "two", "hundred", "fifty", "pills", "don't", "xarelto"]
    assert spans == [(0, 0), (1, 3), (4, 4), (5, 5), (6, 6)]  # one span per split_words token
    assert aligner.frame_s == pytest.approx(0.02)


def test_every_word_in_order_inside_the_audio(aligner, speech):
    for text, pcm in zip(SENTENCES, speech):
        result = aligner.align(text, pcm, RATE)
        _assert_structure(result.words, text, len(pcm) / RATE)
    # "250" is one row spanning the frames of "two hundred fifty": at least 15 characters' frames
    number = aligner.align(SENTENCES[0], speech[0], RATE).words[3]
    assert number.end - number.start >= 15 * aligner.frame_s - 1e-9


def test_other_sampling_rates_are_resampled(aligner):
    syn = synthesize(SENTENCES[1])  # 22.05 kHz
    result = aligner.align(SENTENCES[1], syn.samples, syn.sample_rate)
    _assert_structure(result.words, SENTENCES[1], len(syn.samples) / syn.sample_rate)


def test_batch_equals_one_at_a_time(aligner, speech):
    # batch_size 2: a padded pass of two utterances and a pass of one
    batched = aligner.align_batch([(t, pcm, RATE) for t, pcm in zip(SENTENCES, speech)])
    for text, pcm, result in zip(SENTENCES, speech, batched):
        single = aligner.align(text, pcm, RATE)
        assert [(w.start, w.end) for w in result.words] == [(w.start, w.end) for w in single.words]
        assert [w.score for w in result.words] == pytest.approx([w.score for w in single.words], abs=1e-4)


def test_failures_are_named_and_do_not_sink_the_batch(aligner, speech):
    results = aligner.align_batch([
        ("hello there everybody, how are you", speech[1][:RATE // 10], RATE),  # 5 frames for 34 characters
        ("Привет world", speech[1], RATE),  # no character of the first word in the model's vocabulary
        (SENTENCES[1], speech[1], RATE),
        ("-- ...", speech[1], RATE),
    ])
    assert [r.check if isinstance(r, AlignmentFailed) else "ok" for r in results] == [
        "audio_too_short", "out_of_vocabulary", "ok", "no_words"]
    assert "5 model frames" in results[0].reason and "Привет" in results[1].reason
    _assert_structure(results[2].words, SENTENCES[1], len(speech[1]) / RATE)
    with pytest.raises(AlignmentFailed, match="audio_too_short|needs at least"):
        aligner.align("a much longer transcript than the audio allows", speech[1][:800], RATE)


@pytest.mark.parametrize("model, frame_s", [("bpe_model", 0.04), ("hybrid_model", 0.02)])
def test_bpe_and_hybrid_models(model, frame_s, request, speech):
    from jstip.tasks.align_nemo import NemoAligner

    aligner = NemoAligner(AlignConfig(aligner="nemo", model=request.getfixturevalue(model), batch_size=3))
    assert aligner.frame_s == pytest.approx(frame_s)
    batched = aligner.align_batch([(t, pcm, RATE) for t, pcm in zip(SENTENCES, speech)])
    for text, pcm, result in zip(SENTENCES, speech, batched):
        _assert_structure(result.words, text, len(pcm) / RATE)
        single = aligner.align(text, pcm).words
        assert [(w.start, w.end) for w in result.words] == [(w.start, w.end) for w in single]


def test_align_shard_end_to_end(tmp_path, char_model, speech):
    rows, audio_rows = [], []
    for i, (text, pcm) in enumerate(zip(SENTENCES, speech)):
        path = tmp_path / f"utt{i}.flac"
        sf.write(path, pcm, RATE, subtype="PCM_16", format="FLAC")
        rows.append(dict(utterance_id=f"utt{i}", text=text, source=f"test.jsonl:{i + 1}"))
        audio_rows.append(dict(utterance_id=f"utt{i}", flac_path=str(path), sampling_rate=RATE,
                               num_samples=len(pcm), duration=len(pcm) / RATE))
    rows.append(dict(utterance_id="short", text="far too many words for a tenth of a second of audio",
                     source="test.jsonl:4"))
    sf.write(tmp_path / "short.flac", speech[0][:RATE // 10], RATE, subtype="PCM_16", format="FLAC")
    audio_rows.append(dict(utterance_id="short", flac_path=str(tmp_path / "short.flac"), sampling_rate=RATE,
                           num_samples=RATE // 10, duration=0.1))
    # Random weights put words anywhere, so the aligner-independent energy checks (tested with
    # pocketsphinx in test_align.py) are opened wide here; what is under test is the nemo plumbing.
    config = AlignConfig(aligner="nemo", model=char_model, max_untranscribed_speech_s=1e9,
                         max_silent_word_fraction=1.0, batch_size=2)
    from jstip.tasks.align_nemo import NemoAligner

    aligner = NemoAligner(config)
    batches = []
    real_batch = aligner.align_batch
    aligner.align_batch = lambda items: batches.append(len(items)) or real_batch(items)
    result = align_shard(pa.Table.from_pylist(rows), pa.Table.from_pylist(audio_rows), config, aligner=aligner)

    assert batches == [2, 2]  # align_shard hands the backend batch_size utterances per call

    assert result.status.schema.equals(ALIGN_STATUS)
    assert result.status.column("status").to_pylist() == ["aligned"] * 3 + ["failed"]
    assert result.quarantine.column("check_name").to_pylist() == ["audio_too_short"]
    assert "nemo alignment failed" in result.quarantine.column("reason")[0].as_py()
    words = result.word_alignments
    assert set(words.column("aligner").to_pylist()) == {"nemo"}
    for i, text in enumerate(SENTENCES):
        got = [r for r in words.to_pylist() if r["utterance_id"] == f"utt{i}"]
        assert [r["word"] for r in got] == split_words(text)  # "250" and "142" each one row
        assert [r["word_index"] for r in got] == list(range(len(got)))
        assert all(0 <= r["start"] < r["end"] <= audio_rows[i]["duration"] for r in got)


def test_missing_model_file_is_named(tmp_path):
    from jstip.tasks.align import make_aligner

    missing = tmp_path / "no_such_model.nemo"
    with pytest.raises(FileNotFoundError, match="no_such_model.nemo"):
        make_aligner(AlignConfig(aligner="nemo", model=str(missing)))


def test_pretrained_name_offline_names_the_model():
    from jstip.tasks.align_nemo import NemoAligner

    with pytest.raises(RuntimeError, match="stt_xx_no_such_model_ctc"):
        NemoAligner(AlignConfig(aligner="nemo", model="stt_xx_no_such_model_ctc"))


def test_transcript_verification_compares_the_models_greedy_transcript(char_model, speech):
    """align.verify.max_ctc_cer on the CTC log-probs the alignment computes anyway: a random model's greedy
    transcript is nothing like the text, so a limit of 0 quarantines (with the CER), no limit aligns."""
    from jstip.tasks.align_nemo import NemoAligner

    strict = NemoAligner(AlignConfig(aligner="nemo", model=char_model, verify={"max_ctc_cer": 0.0}))
    with pytest.raises(AlignmentFailed) as info:
        strict.align(SENTENCES[0], speech[0], RATE)
    assert info.value.check == "transcript_mismatch" and float(info.value.value) > 0
    loose = NemoAligner(AlignConfig(aligner="nemo", model=char_model, verify={"max_ctc_cer": 1e9}))
    assert len(loose.align(SENTENCES[0], speech[0], RATE).words) == len(split_words(SENTENCES[0]))


def test_ctc_greedy_text_merges_repeats_and_drops_blanks():
    from jstip.tasks.align import ctc_greedy_text

    letters = {0: "a", 1: "b", 2: " "}
    frames = [3, 0, 0, 3, 0, 1, 1, 2, 1, 3]  # blank = 3: "a", "a" again after a blank, "b", " ", "b"
    assert ctc_greedy_text(np.array(frames), 3, lambda ids: "".join(letters[i] for i in ids)) == "aab b"
    assert ctc_greedy_text(np.array([], dtype=int), 3, lambda ids: "x") == ""
