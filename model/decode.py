"""Decoding a speech-LLM: greedy, beam search, and joint CTC/LLM beam search.

Every utterance is decoded in the ASR format the model was trained with (jstip.tasks.sequences, pool
asr): `<bos> prompt <speech-start> speech <speech-end>`, then text until EOS.

Joint decoding (after Watanabe et al. 2017, "Hybrid CTC/attention"; the CTC model as a hallucination
check as in Schmitt et al. 2026, "LLMs and Speech: Integration vs. Combination") scores each hypothesis as

    score(y) = (1 - lambda) * log p_LLM(y | speech) + lambda * log p_CTC-prefix(y | speech)

where the CTC prefix probability is the probability of all CTC label sequences that start with y, computed
incrementally per appended token (`CTCPrefixScorer`). At EOS the CTC term becomes the probability of
exactly y. Candidates per hypothesis are the LLM's `ctc_candidates` best next tokens (the CTC scorer only
reranks them). An LLM that keeps talking after the audio ends gets a vanishing CTC prefix probability, so
insertions and hallucinated continuations are pruned.

Final hypotheses are ranked by score divided by their length in tokens (EOS included), so beam search
does not prefer short outputs merely for being short.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from jstip.model.batching import lay_out, pad_id
from jstip.model.speech_llm import SpeechLLM
from jstip.schemas.sequences import AudioSlice, Segment, TrainingSequence

NEG_INF = float("-inf")


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 1  # 1 and ctc_weight 0: greedy
    ctc_weight: float = 0.0  # lambda; > 0 needs a model trained with a CTC head
    ctc_candidates: int = 8  # LLM-best next tokens per hypothesis scored by CTC
    max_tokens_per_second: float = 8.0  # hypothesis length limit, from the audio's duration
    min_max_tokens: int = 8

    @property
    def name(self) -> str:
        if self.ctc_weight > 0:
            return f"joint-ctc{self.ctc_weight:g}-beam{self.beam_size}"
        return "greedy" if self.beam_size == 1 else f"beam{self.beam_size}"

    @classmethod
    def parse(cls, name: str) -> "DecodeOptions":
        """The inverse of `name`: greedy | beam<N> | joint-ctc<lambda>-beam<N>."""
        match = re.fullmatch(r"greedy|beam(\d+)|joint-ctc([0-9.]+)-beam(\d+)", name)
        if not match:
            raise ValueError(f"unknown decoding {name!r}: expected greedy, beam<N> (e.g. beam4) or "
                             "joint-ctc<lambda>-beam<N> (e.g. joint-ctc0.3-beam4)")
        if match.group(1):
            return cls(beam_size=int(match.group(1)))
        if match.group(2):
            weight = float(match.group(2))
            if not 0 < weight < 1:
                raise ValueError(f"decoding {name!r}: the CTC weight lambda must lie in (0, 1)")
            return cls(beam_size=int(match.group(3)), ctc_weight=weight)
        return cls()


class CTCPrefixScorer:
    """Incremental CTC prefix log-probabilities of token sequences over one utterance's CTC output.

    State per hypothesis: r (T, 2) = log probability that the prefix has been emitted by frame t and the
    path ends in a non-blank (0) or a blank (1), plus the prefix's score and last token."""

    def __init__(self, log_probs: torch.Tensor, blank: int):
        self.x = log_probs  # (T, vocab + 1)
        self.blank = blank
        self.T = log_probs.shape[0]

    def initial_state(self) -> tuple[torch.Tensor, float, int | None]:
        r = torch.full((self.T, 2), NEG_INF, dtype=self.x.dtype)
        r[:, 1] = torch.cumsum(self.x[:, self.blank], dim=0)
        return r, 0.0, None

    def extend(self, state, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix scores (C,) of the state's prefix + each candidate token, and their new r (C, T, 2)."""
        r_prev, _, last = state
        x_c = self.x[:, tokens]  # (T, C)
        C = tokens.numel()
        r = torch.full((self.T, C, 2), NEG_INF, dtype=self.x.dtype)
        empty_prefix = last is None
        if empty_prefix:
            r[0, :, 0] = x_c[0]
        total = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])  # (T,)
        phi = total[:, None].expand(self.T, C).clone()
        if last is not None:
            same = tokens == last
            phi[:, same] = r_prev[:, 1][:, None]  # a repeated token needs a blank between
        psi = r[0, :, 0].clone()
        for t in range(1, self.T):
            r[t, :, 0] = torch.logaddexp(r[t - 1, :, 0], phi[t - 1]) + x_c[t]
            r[t, :, 1] = torch.logaddexp(r[t - 1, :, 0], r[t - 1, :, 1]) + self.x[t, self.blank]
            psi = torch.logaddexp(psi, phi[t - 1] + x_c[t])
        return psi, r.permute(1, 0, 2)

    def final(self, state) -> float:
        r, _, _ = state
        return float(torch.logaddexp(r[-1, 0], r[-1, 1]))


@dataclass
class _Beam:
    tokens: list[int]
    llm: float  # sum of LLM log-probs
    ctc: float  # CTC prefix log-prob of tokens
    ctc_state: object | None

    def score(self, ctc_weight: float) -> float:
        return (1 - ctc_weight) * self.llm + ctc_weight * self.ctc


@torch.no_grad()
def transcribe(model: SpeechLLM, audio: AudioSlice | torch.Tensor, prompt: str, options: DecodeOptions = DecodeOptions()
               ) -> str:
    """The transcript of one utterance (a slice of a FLAC, or a 16 kHz waveform)."""
    if options.ctc_weight > 0 and model.ctc_head is None:
        raise ValueError("joint CTC decoding needs a model trained with a CTC head (model.ctc_weight > 0)")
    from jstip.model.batching import load_slice

    wave = load_slice(audio) if isinstance(audio, AudioSlice) else audio
    device = next(model.parameters()).device
    wave = wave.to(device)
    tok = model.tokenizer
    fake = AudioSlice("", 0, wave.numel())
    layout = lay_out(TrainingSequence("decode", "asr", "", None, (Segment("speech", "", False, fake),), prompt),
                     tok, model.embeddings_for_samples, end_with_eos=False)
    speech_embeddings, frames, lengths = model.encode_speech([wave])
    ids = torch.tensor([layout.input_ids], device=device)
    kinds = torch.tensor([layout.kinds], device=device)
    prefix = model.input_embeddings(ids, kinds, speech_embeddings)
    max_tokens = max(options.min_max_tokens, int(wave.numel() / 16000 * options.max_tokens_per_second))
    scorer = None
    if options.ctc_weight > 0:
        scorer = CTCPrefixScorer(model.ctc_log_probs(frames[0, :int(lengths[0])]).cpu(), blank=model.vocab_size)
    tokens = _beam_search(model, prefix, options, max_tokens, scorer)
    return tok.decode(tokens, skip_special_tokens=True).strip()


def _beam_search(model: SpeechLLM, prefix: torch.Tensor, options: DecodeOptions, max_tokens: int,
                 scorer: CTCPrefixScorer | None) -> list[int]:
    from transformers import DynamicCache

    eos = model.tokenizer.eos_token_id
    embed = model.llm.get_input_embeddings()
    cache = DynamicCache()
    out = model.llm(inputs_embeds=prefix, past_key_values=cache, use_cache=True)
    logits = out.logits[:, -1].float().log_softmax(-1)  # (beams, vocab)
    beams = [_Beam([], 0.0, 0.0, scorer.initial_state() if scorer else None)]
    finished: list[_Beam] = []
    lam = options.ctc_weight
    width = options.beam_size
    for _ in range(max_tokens):
        candidates = []  # (score, beam index, token, llm, ctc, ctc_state)
        k = max(width, options.ctc_candidates) if scorer else width
        top_lp, top_ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
        for b, beam in enumerate(beams):
            lp, ids = top_lp[b].cpu(), top_ids[b].cpu()
            if scorer is None:
                ctc_scores, states = torch.zeros(len(ids)), None
            else:
                non_eos = ids != eos
                ctc_scores = torch.full((len(ids),), NEG_INF)
                states = [None] * len(ids)
                if bool(non_eos.any()):
                    psi, r = scorer.extend(beam.ctc_state, ids[non_eos])
                    ctc_scores[non_eos] = psi
                    for j, idx in enumerate(torch.nonzero(non_eos).flatten().tolist()):
                        states[idx] = (r[j], float(psi[j]), int(ids[idx]))
                if bool((~non_eos).any()):
                    ctc_scores[~non_eos] = scorer.final(beam.ctc_state)
            for j in range(len(ids)):
                llm = beam.llm + float(lp[j])
                ctc = float(ctc_scores[j])
                score = (1 - lam) * llm + lam * ctc
                candidates.append((score, b, int(ids[j]), llm, ctc, None if states is None else states[j]))
        candidates.sort(key=lambda c: c[0], reverse=True)
        next_beams, order = [], []
        for score, b, token, llm, ctc, state in candidates:
            if score == NEG_INF:
                continue
            beam = _Beam(beams[b].tokens + [token], llm, ctc, state)
            if token == eos:
                finished.append(beam)
            else:
                next_beams.append(beam)
                order.append(b)
            if len(next_beams) >= width or len(finished) >= width:
                break
        if not next_beams or len(finished) >= width:
            break
        beams = next_beams
        cache.reorder_cache(torch.tensor(order, device=prefix.device))
        step_ids = torch.tensor([[b.tokens[-1]] for b in beams], device=prefix.device)
        out = model.llm(inputs_embeds=embed(step_ids), past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1].float().log_softmax(-1)
    pool = finished or beams
    best = max(pool, key=lambda b: b.score(lam) / len(b.tokens) if b.tokens else NEG_INF)
    return [t for t in best.tokens if t != eos and t != pad_id(model.tokenizer)]
