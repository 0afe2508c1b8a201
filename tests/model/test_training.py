"""Training: sequence layout and label masking, the sequence builder over a real dataset version, a tiny
speech-LLM learning on real synthetic speech, exact resume, registration, and bad input."""

from __future__ import annotations

import csv
import pickle
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch

from jstip.model.batching import collate, lay_out, load_slice, text_ids
from jstip.model.config import SpeechLLMConfig, TinyLMConfig, TrainConfig, load_train_config
from jstip.model.speech_llm import (IGNORE_INDEX, KIND_SPEECH, KIND_SPEECH_END, KIND_SPEECH_START, KIND_TEXT,
                                    build_speech_llm, load_speech_llm)
from jstip.model.tiny_lm import build_tiny_lm
from jstip.schemas.sequences import AudioSlice, Segment, TrainingSequence
from jstip.storage.registry import ModelRegistry
from jstip.storage.store import DatasetStore
from jstip.model.sequence_pools import BucketSampler, DatasetError, build_sequences
from jstip.model.training import loss_and_backward, train

from tiny_model import TINY, publish_six_utterances

REPO = Path(__file__).resolve().parents[2]
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A published version of 6 real synthetic utterances (word-level F1 plans, the demo config)."""
    root = tmp_path_factory.mktemp("train")
    store, published = publish_six_utterances(root)
    assert published.accepted == 6
    return store, published.version_id


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("llm")
    return build_tiny_lm(path, ["Transcribe the speech.", "take two tablets of ibuprofen daily",
                                "my card ending in four two"], TinyLMConfig(vocab_size=300, hidden=32, intermediate=64))


def test_demo_training_config_file_equals_the_defaults():
    assert load_train_config(REPO / "configs" / "train_demo.yaml") == TrainConfig()


def test_layout_masks_prompt_speech_and_markers_and_keeps_text_and_eos(tiny_llm, tmp_path):
    model = build_speech_llm(SpeechLLMConfig(), tiny_llm)
    tok = model.tokenizer
    # 16000 samples -> 101 log-mel frames -> 51 -> 26 conv frames -> 13 embeddings of 2 stacked frames
    assert model.embeddings_for_samples(16000) == 13
    audio = AudioSlice(str(tmp_path / "a.flac"), 100, 16100)
    sequence = TrainingSequence("s", "interleaved", "u", "medical", (
        Segment("text", "take two"),
        Segment("speech", "tablets", loss=False, audio=audio),
        Segment("text", "tablets"),
        Segment("text", "daily", loss=False),
    ), prompt="Transcribe the speech.")
    layout = lay_out(sequence, tok, model.embeddings_for_samples)

    prompt, take, tablets, daily = (text_ids(tok, t) for t in ("Transcribe the speech.", "take two", "tablets", "daily"))
    pad, bos, eos = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    assert layout.input_ids == [bos, *prompt, *take, pad, *[pad] * 13, pad, *tablets, *daily, eos]
    assert layout.labels == ([IGNORE_INDEX] * (1 + len(prompt)) + take + [IGNORE_INDEX] * 15 + tablets
                             + [IGNORE_INDEX] * len(daily) + [eos])
    assert layout.kinds == ([KIND_TEXT] * (1 + len(prompt) + len(take)) + [KIND_SPEECH_START] + [KIND_SPEECH] * 13
                            + [KIND_SPEECH_END] + [KIND_TEXT] * (len(tablets) + len(daily) + 1))
    assert layout.speech == [audio] and layout.speech_targets == [tablets]


def test_frame_arithmetic_matches_what_the_encoders_produce(tiny_llm):
    lengths = [1, 150, 401, 1280, 16000, 16001, 37123]
    for encoder in ({"kind": "conv"}, {"kind": "whisper", "whisper_window_s": 1.0, "d_model": 32, "ffn_dim": 64}):
        model = build_speech_llm(SpeechLLMConfig(encoder=encoder, projector={"stack": 2}), tiny_llm).eval()
        waves = [torch.randn(n) * 0.1 for n in lengths]
        with torch.no_grad():
            embeddings, frames, frame_lengths = model.encode_speech(waves)
        assert frame_lengths.tolist() == [model.encoder.num_frames(n) for n in lengths]
        assert embeddings.shape[0] == sum(model.embeddings_for_samples(n) for n in lengths)


def test_sequence_builder_cuts_speech_spans_at_the_plans_sample_offsets(dataset):
    store, version = dataset
    pools = build_sequences(DatasetStore(store), version, TrainConfig().mix, "Transcribe the speech.")
    # text: the one domain sentence the word-strategy build planned from its text corpus (0.1 / 0.9 x 6 plans)
    assert pools.version_id == version and pools.counts() == {"interleaved": 6, "asr": 6, "text": 1}
    spans = DatasetStore(store).read_table(version, "spans").to_pylist()
    speech_spans = {(s["utterance_id"], s["text"], s["start_sample"]): s for s in spans if s["modality"] == "speech"}
    utterances = {u["utterance_id"]: u["text"] for u in DatasetStore(store).read_table(version, "utterances").to_pylist()}
    checked = 0
    for sequence in pools.pools["interleaved"]:
        words = []
        for i, segment in enumerate(sequence.segments):
            if segment.modality == "speech":
                span = speech_spans[(sequence.utterance_id, segment.text, segment.audio.start_sample)]
                samples = load_slice(segment.audio)
                assert samples.numel() == span["end_sample"] - span["start_sample"]
                assert abs(samples.numel() / 16000 - (span["audio_end"] - span["audio_start"])) <= 1 / 16000
                words.append(segment.text)
                checked += 1
            elif not (i > 0 and sequence.segments[i - 1].modality == "speech"):  # F1: skip the repeated transcript
                words.append(segment.text)
        assert " ".join(words) == utterances[sequence.utterance_id]
    assert checked == len(speech_spans)
    for sequence in pools.pools["asr"]:
        speech, transcript = sequence.segments
        info = sf.info(speech.audio.path)
        assert (speech.audio.start_sample, speech.audio.end_sample) == (0, info.frames)
        assert transcript.text == utterances[sequence.utterance_id] and sequence.prompt == "Transcribe the speech."


def test_sampler_is_a_function_of_seed_and_step_and_respects_pool_weights(dataset):
    store, version = dataset
    pools = build_sequences(DatasetStore(store), version, TrainConfig().mix, "p").pools
    a = BucketSampler(pools, {"interleaved": 1, "asr": 0, "text": 0}, 3, 2, seed=5)
    b = BucketSampler(pools, {"interleaved": 1, "asr": 0, "text": 0}, 3, 2, seed=5)
    assert [s.sequence_id for s in a.batch(7)] == [s.sequence_id for s in b.batch(7)]
    assert all(s.pool == "interleaved" for step in range(20) for s in a.batch(step))
    with pytest.raises(DatasetError, match="pools with a positive mix weight are empty"):
        BucketSampler({**pools, "text": []}, {"interleaved": 0, "asr": 0, "text": 1}, 3, 2, seed=5)


def test_rank_shares_partition_every_global_batch(dataset):
    store, version = dataset
    pools = build_sequences(DatasetStore(store), version, TrainConfig().mix, "p").pools
    sampler = BucketSampler(pools, {"interleaved": 1, "asr": 1, "text": 0}, 5, 2, seed=3)
    for world_size in (1, 2, 3, 5):
        for step in range(10):
            shares = [sampler.rank_batch(step, rank, world_size) for rank in range(world_size)]
            # interleaved back (rank r holds items r, r + n, ...): exactly the global batch, in order
            merged = [shares[i % world_size][i // world_size] for i in range(5)]
            assert [s.sequence_id for s in merged] == [s.sequence_id for s in sampler.batch(step)]


def test_the_sequence_index_is_mapped_once_pickles_by_path_and_moves_with_its_store(dataset, tmp_path):
    store, version = dataset
    pools = build_sequences(DatasetStore(store), version, TrainConfig().mix, "p")
    index_dir = pools.index.directory
    assert index_dir.is_relative_to(DatasetStore(store).work_dir)
    # a DataLoader worker started by spawn receives the pool as the index's path, not its data
    pool = pools.pools["asr"]
    assert len(pickle.dumps(pool)) < 1000
    assert pickle.loads(pickle.dumps(pool))[0] == pool[0]

    # the store moved (the original out of reach): the same index is used and its audio paths resolve
    # under the new root
    built = (index_dir / "index.json").read_text()
    moved = tmp_path / "moved"
    shutil.copytree(store, moved, symlinks=True)
    away = store.with_name(store.name + ".away")
    store.rename(away)
    try:
        again = build_sequences(DatasetStore(moved), version, TrainConfig().mix, "p")
        assert again.index.directory == DatasetStore(moved).work_dir / index_dir.relative_to(DatasetStore(store).work_dir)
        assert (again.index.directory / "index.json").read_text() == built  # not rebuilt
        speech = [seg.audio for seq in again.pools["interleaved"] for seg in seq.segments if seg.audio is not None]
        assert speech and all(a.path.startswith(f"{moved}/") for a in speech)
        assert all(load_slice(a).numel() == a.end_sample - a.start_sample for a in speech)
    finally:
        away.rename(store)


def test_dataloader_workers_make_the_same_batches_as_the_training_process(dataset, tmp_path):
    store, version = dataset
    weights = {}
    for workers in (0, 2):
        copy = tmp_path / f"workers-{workers}"
        shutil.copytree(store, copy, symlinks=True)
        config = TrainConfig.model_validate({**TINY.model_dump(), "loader": {"workers": workers, "prefetch": 2}})
        result = train(copy, version, config)
        weights[workers] = _weights(result.model_dir)
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_one_backward_pass_reaches_the_projector_encoder_markers_and_ctc_head(dataset, tiny_llm):
    store, version = dataset
    pools = build_sequences(DatasetStore(store), version, TrainConfig().mix, "p").pools
    model = build_speech_llm(SpeechLLMConfig(ctc_weight=0.5), tiny_llm)
    losses = loss_and_backward(model, pools["interleaved"][:2] + pools["asr"][:2], torch.device("cpu"))
    assert set(losses) >= {"loss", "llm_loss", "ctc_loss"}
    assert losses["loss"] == pytest.approx(losses["llm_loss"] + 0.5 * losses["ctc_loss"], rel=1e-5)
    for name in ("projector.0.weight", "encoder.conv1.weight", "speech_start", "speech_end", "ctc_head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_frozen_llm_and_lora_train_only_what_they_should(tiny_llm):
    frozen = build_speech_llm(SpeechLLMConfig(freeze_llm=True, freeze_encoder=True), tiny_llm)
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    # the new parts train: the span markers, the projector and the CTC head (on by default)
    assert trainable == {"speech_start", "speech_end", "projector.0.weight", "projector.0.bias",
                         "projector.2.weight", "projector.2.bias", "ctc_head.weight", "ctc_head.bias"}
    lora = build_speech_llm(SpeechLLMConfig(llm={"lora": {"r": 2}}), tiny_llm)
    llm_trainable = {n for n, p in lora.named_parameters() if p.requires_grad and n.startswith("llm.")}
    assert llm_trainable and all("lora_" in n for n in llm_trainable)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / "weights.pt", weights_only=True)


def test_training_learns_resumes_exactly_and_registers_the_model(dataset, tmp_path):
    store, version = dataset
    resumed_store = tmp_path / "resumed"
    shutil.copytree(store, resumed_store, symlinks=True)
    # the copy is a store of its own (paths in the catalog and the audio paths are relative to its root)
    config = TINY.model_copy(update={"steps": 30, "checkpoint_every": 10, "log_every": 10})

    straight = train(store, version, config)
    assert straight.resumed_from_step is None and straight.dataset_version == version
    assert straight.metrics["final_loss"] < straight.metrics["first_loss"] - 0.5  # it learns
    assert straight.metrics["sequences_per_pool"] == {"interleaved": 6, "asr": 6, "text": 1}

    stopped = train(resumed_store, version, config, stop_after=12)
    assert stopped.steps == 12 and stopped.model_id == straight.model_id
    assert [p.name for p in sorted((stopped.model_dir).glob("step-*"))] == ["step-0000010", "step-0000012"]
    resumed = train(resumed_store, version, config)
    assert resumed.resumed_from_step == 12 and resumed.model_id == straight.model_id
    with (resumed.model_dir.parent / "train_log.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 31))
    a, b = _weights(straight.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resume is exact

    record = ModelRegistry(store).model(straight.model_id)
    assert record.dataset_version == version and record.path == straight.model_dir
    assert record.config == __import__("json").loads(config.canonical_json())
    # the saved model loads back and embeds speech the same way
    reloaded = load_speech_llm(straight.model_dir)
    assert torch.equal(reloaded.projector[0].weight, a["projector.0.weight"])
    again = train(store, version, config)  # finished: nothing to do, same record
    assert again.model_id == straight.model_id and again.resumed_from_step is None


def test_unknown_or_unfinished_version_and_missing_audio_are_clear_errors(dataset, tmp_path):
    store, version = dataset
    with pytest.raises(DatasetError, match="no dataset version or dataset named 'ffff'"):
        build_sequences(DatasetStore(store), "ffff", TrainConfig().mix, "p")
    with pytest.raises(DatasetError, match="nothing has been published to this store yet"):
        build_sequences(DatasetStore(tmp_path / "empty"), None, TrainConfig().mix, "p")

    version_dir = DatasetStore(store).version(version).path
    (version_dir / "spans").rename(version_dir / "spans.hidden")
    try:
        with pytest.raises(DatasetError, match=rf"dataset version {version} is registered but incomplete on disk: "
                                               r"no spans under"):
            build_sequences(DatasetStore(store), version, TrainConfig().mix, "p")
    finally:
        (version_dir / "spans.hidden").rename(version_dir / "spans")

    pools = build_sequences(DatasetStore(store), version, TrainConfig().mix, "p")
    victim = pools.pools["asr"][0].segments[0].audio.path
    hidden = Path(victim + ".hidden")
    Path(victim).rename(hidden)
    try:
        with pytest.raises(DatasetError, match=rf"1 audio file\(s\) missing .* used by 2 sequence\(s\); "
                                               rf"e.g. utterance {pools.pools['asr'][0].utterance_id}"):
            build_sequences(DatasetStore(store), version, TrainConfig().mix, "p")
        skipped = build_sequences(DatasetStore(store), version, TrainConfig().mix, "p", on_missing_audio="skip")
        assert skipped.skipped == {"missing_audio": 2}
        assert skipped.counts() == {"interleaved": 5, "asr": 5, "text": 1}
    finally:
        hidden.rename(victim)


def test_pretrained_whisper_encoder_and_a_qwen_style_llm_load_from_local_directories(tiny_llm, tmp_path):
    """Users point encoder.pretrained / llm.path at checkpoints; here both are tiny ones saved locally."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, WhisperConfig, WhisperModel

    whisper_dir = tmp_path / "whisper"
    WhisperModel(WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                               decoder_ffn_dim=64, max_source_positions=50)).save_pretrained(whisper_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    qwen_dir = tmp_path / "qwen"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(qwen_dir)
    tokenizer.save_pretrained(qwen_dir)

    config = SpeechLLMConfig(encoder={"kind": "whisper", "pretrained": str(whisper_dir)}, projector={"stack": 4},
                             llm={"path": str(qwen_dir)})
    model = build_speech_llm(config, qwen_dir)
    saved = WhisperModel.from_pretrained(whisper_dir).get_encoder().state_dict()
    assert all(torch.equal(saved[k], v) for k, v in model.encoder.encoder.state_dict().items())
    assert type(model.llm).__name__ == "Qwen2ForCausalLM"
    assert model.embeddings_for_samples(16000) == 13  # 101 frames -> 51 (20 ms) -> 13 of 4 stacked (80 ms)
    sequence = TrainingSequence("s", "asr", "u", None, (
        Segment("speech", "two tablets", loss=False, audio=AudioSlice("x", 0, 24000)),
        Segment("text", "two tablets")), prompt="Transcribe the speech.")
    # laid out without the model's CTC units (the LLM's token ids as CTC targets): refused, not read out of range
    wrong = collate([lay_out(sequence, model.tokenizer, model.embeddings_for_samples)], model.tokenizer,
                    load=lambda a: torch.randn(a.num_samples) * 0.1)
    with pytest.raises(ValueError, match="CTC targets outside the head's"):
        model(wrong)
    layout = lay_out(sequence, model.tokenizer, model.embeddings_for_samples, ctc_targets=model.ctc_targets)
    batch = collate([layout], model.tokenizer, load=lambda a: torch.randn(a.num_samples) * 0.1)
    losses = model(batch)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and model.projector[0].weight.grad is not None


def test_epochs_set_the_number_of_steps_from_the_dataset_size(dataset):
    store, version = dataset
    # 6 interleaved + 6 asr sequences (text has weight 0.2 but no sequences): 1.5 epochs of 12 at batch 4
    done = train(store, version, TINY.model_copy(update={"epochs": 1.5, "steps": 1}))
    assert done.steps == 5 and done.metrics["steps_logged"] == 5


def test_lm_prior_is_pretrained_registered_and_a_speech_llm_starts_from_it(dataset, tmp_path):
    """jstip pretrain-lm's task: domain text + general English -> a registered LM prior whose loss fell;
    a speech-LLM trained with model.llm.path = its id starts from its weights and tokenizer, records it
    as its parent, and is self-contained (the prior is copied into it)."""
    from transformers import AutoModelForCausalLM

    from jstip.model.config import PretrainConfig
    from jstip.model.pretraining import pretrain_lm

    store, version = dataset
    config = PretrainConfig(lm=TinyLMConfig(vocab_size=400, hidden=32, intermediate=64), general_sentences=300,
                            steps=40, batch_size=16, warmup_steps=4, learning_rate=1e-2)
    prior = pretrain_lm(store, version, config)
    assert prior.metrics["final_loss"] < prior.metrics["first_loss"] - 0.5
    assert prior.metrics["general_sentences"] == 300 and prior.metrics["domain_sentences"] == 12  # 6 + 6 distinct
    record = ModelRegistry(store).model(prior.model_id)
    assert record.name == "lm-prior" and record.dataset_version == version and record.path == prior.model_dir
    assert record.config["kind"] == "lm_prior" and len(record.config["general_text_source"]["sha256"]) == 64
    assert len((prior.model_dir / "general_text.txt").read_text().splitlines()) == 300
    assert pretrain_lm(store, version, config).model_id == prior.model_id  # same inputs: the same prior, no work

    speech = train(store, version, TINY.model_copy(update={"steps": 2, "model": TINY.model.model_copy(update={
        "llm": TINY.model.llm.model_copy(update={"path": prior.model_id[:6]})})}))
    speech_record = ModelRegistry(store).model(speech.model_id)
    assert speech_record.parent_model == prior.model_id
    assert speech_record.config["model"]["llm"]["path"] == prior.model_id  # the prefix resolved to the id
    prior_weights = AutoModelForCausalLM.from_pretrained(prior.model_dir).state_dict()
    copied = AutoModelForCausalLM.from_pretrained(speech.model_dir / "llm").state_dict()
    assert all(torch.equal(prior_weights[k], copied[k]) for k in prior_weights)
    assert load_speech_llm(speech.model_dir).tokenizer.get_vocab() == \
        __import__("transformers").AutoTokenizer.from_pretrained(prior.model_dir).get_vocab()


def test_loss_and_wer_fall_on_a_tiny_set(dataset):
    """Learning happens: the default model (character CTC head, joint decoding) trained 150 steps on the 6
    utterances transcribes them; one step does not."""
    from jstip.model.decode import DecodeOptions
    from jstip.model.evaluation import evaluate

    store, version = dataset
    config = TrainConfig(steps=150, batch_size=6, warmup_steps=10, learning_rate=3e-3,
                         mix={"interleaved": 0, "asr": 1, "text": 0},
                         model=SpeechLLMConfig(llm={"tiny": TinyLMConfig(vocab_size=400, hidden=64, intermediate=128)},
                                               encoder={"dropout": 0.0}))
    wer = {}
    for steps in (1, 150):
        trained = train(store, version, config.model_copy(update={"steps": steps}))
        report = evaluate(store, trained.model_id, version, decodings=[DecodeOptions.parse("joint-ctc0.3-beam4")])
        wer[steps] = report.overall["joint-ctc0.3-beam4"]["wer"]
        if steps == 150:
            assert trained.metrics["final_loss"] < trained.metrics["first_loss"] - 5
    assert wer[1] >= 0.95 and wer[150] <= 0.5, wer
