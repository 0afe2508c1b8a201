"""Decoding: the CTC prefix scorer against brute-force path enumeration, cached greedy decoding against a
full recomputation, decoding names, and joint decoding's requirements."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from jstip.model.batching import lay_out
from jstip.model.config import SpeechLLMConfig, TinyLMConfig
from jstip.model.decode import CTCPrefixScorer, DecodeOptions, transcribe
from jstip.model.speech_llm import build_speech_llm
from jstip.model.tiny_lm import build_tiny_lm
from jstip.schemas.sequences import AudioSlice, Segment, TrainingSequence

BLANK = 3  # vocabulary {0, 1, 2} + blank


def _collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out, previous = [], None
    for label in path:
        if label != previous and label != BLANK:
            out.append(label)
        previous = label
    return tuple(out)


def _brute_force(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Probability of every label sequence, summed over all CTC paths that collapse to it."""
    probs = log_probs.exp()
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(BLANK + 1), repeat=log_probs.shape[0]):
        p = math.prod(float(probs[t, label]) for t, label in enumerate(path))
        key = _collapse(path)
        totals[key] = totals.get(key, 0.0) + p
    return totals


def test_ctc_prefix_scores_equal_brute_force_path_sums():
    torch.manual_seed(0)
    log_probs = torch.randn(5, BLANK + 1).double().log_softmax(-1)  # normalised in float64
    sequences = _brute_force(log_probs)
    assert sum(sequences.values()) == pytest.approx(1.0)
    prefix_prob = lambda prefix: sum(p for seq, p in sequences.items() if seq[:len(prefix)] == prefix)  # noqa: E731

    scorer = CTCPrefixScorer(log_probs, blank=BLANK)
    state = scorer.initial_state()
    for prefix in [(1,), (1, 1), (1, 1, 2)]:  # includes a repeated token (needs a blank between)
        psi, r = scorer.extend(state, torch.tensor([0, 1, 2]))
        for token in range(3):
            assert math.exp(float(psi[token])) == pytest.approx(prefix_prob(prefix[:-1] + (token,)), rel=1e-9)
        chosen = prefix[-1]
        state = (r[chosen], float(psi[chosen]), chosen)
        # at EOS the CTC term is the probability of exactly this sequence
        assert math.exp(scorer.final(state)) == pytest.approx(sequences.get(prefix, 0.0), rel=1e-9)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    llm = build_tiny_lm(tmp_path_factory.mktemp("llm"), ["Transcribe the speech.", "one two three four five"],
                        TinyLMConfig(vocab_size=300, hidden=32, intermediate=64))
    torch.manual_seed(3)
    return build_speech_llm(SpeechLLMConfig(ctc_weight=0.3), llm).eval()


def test_cached_greedy_decoding_equals_argmax_over_full_recomputation(model):
    wave = torch.randn(12000) * 0.05
    options = DecodeOptions(max_tokens_per_second=8.0, min_max_tokens=8)
    text = transcribe(model, wave, "Transcribe the speech.", options)

    tok = model.tokenizer
    layout = lay_out(TrainingSequence("d", "asr", "", None, (Segment("speech", "", False, AudioSlice("", 0, 12000)),),
                                      "Transcribe the speech."), tok, model.embeddings_for_samples, end_with_eos=False)
    with torch.no_grad():
        speech, _, _ = model.encode_speech([wave])
        prefix = model.input_embeddings(torch.tensor([layout.input_ids]), torch.tensor([layout.kinds]), speech)
        tokens = []
        for _ in range(8):  # 0.75 s * 8 tokens/s < 8: the floor applies
            embeds = torch.cat([prefix, model.llm.get_input_embeddings()(torch.tensor([tokens]))], dim=1) if tokens else prefix
            token = int(model.llm(inputs_embeds=embeds).logits[0, -1].argmax())
            tokens.append(token)
            if token == tok.eos_token_id:
                break
    expected = tok.decode([t for t in tokens if t not in (tok.eos_token_id, tok.pad_token_id)],
                          skip_special_tokens=True).strip()
    assert text == expected


def test_beam_and_joint_decoding_return_text_and_names_round_trip(model):
    wave = torch.randn(16000) * 0.05
    for name in ("greedy", "beam3", "joint-ctc0.5-beam3", "ctc-greedy"):
        options = DecodeOptions.parse(name)
        assert options.name == name
        assert isinstance(transcribe(model, wave, "Transcribe the speech.", options), str)
    with pytest.raises(ValueError, match="unknown decoding 'beam'"):
        DecodeOptions.parse("beam")
    with pytest.raises(ValueError, match="lambda must lie in"):
        DecodeOptions.parse("joint-ctc1.5-beam2")


def test_joint_decoding_needs_a_ctc_head(tmp_path):
    llm = build_tiny_lm(tmp_path / "llm", ["a b c"], TinyLMConfig(vocab_size=300, hidden=32, intermediate=64))
    plain = build_speech_llm(SpeechLLMConfig(ctc_weight=0.0), llm).eval()
    with pytest.raises(ValueError, match="needs a model trained with a CTC head"):
        transcribe(plain, torch.zeros(8000), "p", DecodeOptions(beam_size=2, ctc_weight=0.3))


def test_character_units_of_a_text_and_of_its_tokens_agree(tmp_path):
    from jstip.model.ctc import ALPHABET, TokenUnits, UnitState, character_string, character_targets

    assert character_string("Follow-up, Dr. O'Brien!  Café 24/7") == "follow up dr o'brien cafe 24 7"
    assert [ALPHABET[u] for u in character_targets("  Hi -- there ")] == list("hi there")
    llm = build_tiny_lm(tmp_path / "llm", ["Follow-up with Dr. O'Brien, twice a day.", "Take 250 mg."],
                        TinyLMConfig(vocab_size=300, hidden=32, intermediate=64))
    tok = build_speech_llm(SpeechLLMConfig(), llm).tokenizer
    units = TokenUnits(tok, "characters")
    for text in ["Follow-up with Dr. O'Brien, twice a day.", "Take 250 mg.", " , Take  it. "]:
        state, emitted = UnitState(), []
        for token in tok(" " + text, add_special_tokens=False).input_ids:
            added, state = units.extend(state, token)
            emitted += added
        assert emitted == character_targets(text), text  # token by token = the whole text at once
    assert TokenUnits(tok, "llm_tokens").extend(UnitState(), 7) == ([7], UnitState(7, False))


def test_joint_scores_of_character_units_equal_brute_force_prefix_sums():
    """A prefix extended unit by unit over several candidates at once (extend_many) has the brute-force
    prefix probability, whatever the candidates' previous units."""
    torch.manual_seed(1)
    log_probs = torch.randn(5, BLANK + 1).double().log_softmax(-1)
    sequences = _brute_force(log_probs)
    prefix_prob = lambda prefix: sum(p for seq, p in sequences.items() if seq[:len(prefix)] == prefix)  # noqa: E731
    scorer = CTCPrefixScorer(log_probs, blank=BLANK)
    r0, _, _ = scorer.initial_state()
    # three candidates with different histories, extended together: (2,) -> (2, 2), (1,) -> (1, 0), () -> (0,)
    psi_a, r_a = scorer.extend_many(torch.stack([r0, r0]), torch.tensor([-1, -1]), torch.tensor([2, 1]))
    psi, r = scorer.extend_many(torch.stack([r_a[0], r_a[1], r0]), torch.tensor([2, 1, -1]), torch.tensor([2, 0, 0]))
    for value, prefix in zip(psi.tolist(), [(2, 2), (1, 0), (0,)]):
        assert math.exp(value) == pytest.approx(prefix_prob(prefix), rel=1e-9)
    for i, prefix in enumerate([(2, 2), (1, 0), (0,)]):
        assert math.exp(scorer.final((r[i], 0.0, None))) == pytest.approx(sequences.get(prefix, 0.0), rel=1e-9)
