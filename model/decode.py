"""Decoding a speech-LLM: greedy, beam search, joint CTC/LLM beam search, and the CTC head alone.

Every utterance is decoded in the ASR format the model was trained with (jstip.model.sequence_pools, pool
asr): `<bos> prompt <speech-start> speech <speech-end>`, then text until EOS.

Joint decoding (after Watanabe et al. 2017, "Hybrid CTC/attention"; the CTC model as a hallucination
check as in Schmitt et al. 2026, "LLMs and Speech: Integration vs. Combination") scores each hypothesis as

    score(y) = (1 - lambda) * log p_LLM(y | speech) + lambda * log p_CTC-prefix(y | speech)

where the CTC prefix probability is the probability of all CTC label sequences that start with y's units
(its characters, or its tokens when the CTC head predicts LLM tokens: jstip.model.ctc), computed
incrementally per appended unit (`CTCPrefixScorer`). At EOS the CTC term becomes the probability of
exactly y. Candidates per hypothesis are the LLM's `ctc_candidates` best next tokens (the CTC scorer
reranks them). An LLM that keeps talking after the audio ends gets a vanishing CTC prefix probability, so
insertions and hallucinated continuations are pruned.

`ctc-greedy` reads the CTC head alone (best path: most likely unit per frame, repeats merged, blanks
dropped): no LLM, a diagnostic of what the encoder has learned.

Final hypotheses are ranked by score divided by their length in tokens (EOS included), so beam search
does not prefer short outputs merely for being short.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from jstip.model.batching import lay_out, pad_id
from jstip.model.ctc import ALPHABET, UnitState
from jstip.model.speech_llm import SpeechLLM
from jstip.schemas.sequences import AudioSlice, Segment, TrainingSequence

NEG_INF = float("-inf")


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 1  # 1 and ctc_weight 0: greedy
    ctc_weight: float = 0.0  # lambda; > 0 needs a model trained with a CTC head
    ctc_candidates: int = 16  # LLM-best next tokens per hypothesis scored by CTC, and as many CTC-proposed
    ctc_next_units: int = 2  # CTC proposals: tokens starting with one of the CTC's this-many likeliest next units
    max_tokens_per_second: float = 8.0  # hypothesis length limit, from the audio's duration
    min_max_tokens: int = 8
    ctc_only: bool = False  # the CTC head's best path, no LLM

    @property
    def name(self) -> str:
        if self.ctc_only:
            return "ctc-greedy"
        if self.ctc_weight > 0:
            return f"joint-ctc{self.ctc_weight:g}-beam{self.beam_size}"
        return "greedy" if self.beam_size == 1 else f"beam{self.beam_size}"

    @classmethod
    def parse(cls, name: str) -> "DecodeOptions":
        """The inverse of `name`: greedy | beam<N> | joint-ctc<lambda>-beam<N> | ctc-greedy."""
        if name == "ctc-greedy":
            return cls(ctc_only=True)
        match = re.fullmatch(r"greedy|beam(\d+)|joint-ctc([0-9.]+)-beam(\d+)", name)
        if not match:
            raise ValueError(f"unknown decoding {name!r}: expected greedy, beam<N> (e.g. beam4), "
                             "joint-ctc<lambda>-beam<N> (e.g. joint-ctc0.3-beam4) or ctc-greedy")
        if match.group(1):
            return cls(beam_size=int(match.group(1)))
        if match.group(2):
            weight = float(match.group(2))
            if not 0 < weight < 1:
                raise ValueError(f"decoding {name!r}: the CTC weight lambda must lie in (0, 1)")
            return cls(beam_size=int(match.group(3)), ctc_weight=weight)
        return cls()


class CTCPrefixScorer:
    """Incremental CTC prefix log-probabilities of unit sequences over one utterance's CTC output.

    A prefix's state `r` (T, 2) holds the log probabilities that the prefix has been emitted by frame t with
    the path ending in a non-blank (0) or a blank (1). Extending prefix g by unit c (Graves 2012; Watanabe
    et al. 2017, algorithm 2):

        phi(t)   = r_b(t) if c == last(g) else logaddexp(r_n(t), r_b(t))   (a repeat needs a blank between)
        r_n'(t)  = logaddexp(r_n'(t-1), phi(t-1)) + x_t(c)     phi(-1) = 0 for the empty prefix, else -inf
        r_b'(t)  = logaddexp(r_n'(t-1), r_b'(t-1)) + x_t(blank)
        psi      = logsumexp_t (phi(t-1) + x_t(c))             the prefix probability of g + c

    Both recursions are linear in probability space, so in log space they are cumulative log-sum-exps:

        r_n'(t) = X(t) + logcumsumexp_{s<=t} (phi(s-1) - X(s-1)),   X = cumsum_t log x_t(c), X(-1) = 0
        r_b'(t) = B(t) + logcumsumexp_{s<t} (r_n'(s) - B(s)),       B = cumsum_t log x_t(blank)

    so an extension is a few tensor operations over (candidates, T) instead of a Python loop over frames.
    Computed in float64: X and B reach thousands of nats on long utterances."""

    def __init__(self, log_probs: torch.Tensor, blank: int):
        self.x = log_probs.double()  # (T, units + 1)
        self.blank = blank
        self.T = log_probs.shape[0]
        self._blank_cum = torch.cumsum(self.x[:, blank], dim=0)  # B

    def initial_state(self) -> tuple[torch.Tensor, float, int | None]:
        """(r, score, last unit) of the empty prefix."""
        r = torch.full((self.T, 2), NEG_INF, dtype=self.x.dtype)
        r[:, 1] = self._blank_cum
        return r, 0.0, None

    def extend_many(self, r_prev: torch.Tensor, last: torch.Tensor, units: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Extend C prefixes by one unit each: r_prev (C, T, 2), last (C,) their last units (-1: the empty
        prefix), units (C,). -> psi (C,) prefix log-probabilities, r (C, T, 2) the new states."""
        x_c = self.x[:, units].T  # (C, T)
        repeat = (units == last)[:, None]
        phi = torch.where(repeat, r_prev[:, :, 1], torch.logaddexp(r_prev[:, :, 0], r_prev[:, :, 1]))
        start = torch.where(last < 0, 0.0, NEG_INF).to(phi)[:, None]
        phi_before = torch.cat([start, phi[:, :-1]], dim=1)  # phi(t - 1)
        X = torch.cumsum(x_c, dim=1)
        X_before = torch.cat([torch.zeros_like(X[:, :1]), X[:, :-1]], dim=1)  # X(t - 1)
        r_n = X + torch.logcumsumexp(phi_before - X_before, dim=1)
        B = self._blank_cum[None, :]
        carried = torch.logcumsumexp(r_n - B, dim=1)
        r_b = torch.cat([torch.full_like(r_n[:, :1], NEG_INF), B[:, 1:] + carried[:, :-1]], dim=1)
        psi = torch.logsumexp(phi_before + x_c, dim=1)
        return psi, torch.stack([r_n, r_b], dim=2)

    def extend(self, state, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix scores (C,) of the state's prefix + each candidate unit, and their new r (C, T, 2)."""
        r_prev, _, last = state
        C = units.numel()
        return self.extend_many(r_prev[None].expand(C, -1, -1), torch.full((C,), -1 if last is None else last),
                                units.long())

    def final(self, state) -> float:
        r, _, _ = state
        return float(torch.logaddexp(r[-1, 0], r[-1, 1]))


@dataclass
class _Beam:
    tokens: list[int]
    llm: float  # sum of LLM log-probs
    ctc: float  # CTC prefix log-prob of tokens
    ctc_r: torch.Tensor | None  # the CTC prefix state (T, 2)
    units: UnitState  # where the token sequence stands in CTC units
    unitless: bool = False  # the last token added no CTC unit (punctuation)

    def score(self, ctc_weight: float) -> float:
        return (1 - ctc_weight) * self.llm + ctc_weight * self.ctc


def ctc_best_path(model: SpeechLLM, log_probs: torch.Tensor) -> str:
    """The CTC head's best path as text: most likely unit per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1).tolist()
    units = [u for i, u in enumerate(best) if u != model.token_units.blank and (i == 0 or u != best[i - 1])]
    if model.token_units.kind == "llm_tokens":
        return model.tokenizer.decode(units, skip_special_tokens=True).strip()
    return "".join(ALPHABET[u] for u in units).strip()


@torch.no_grad()
def transcribe(model: SpeechLLM, audio: AudioSlice | torch.Tensor, prompt: str, options: DecodeOptions = DecodeOptions()
               ) -> str:
    """The transcript of one utterance (a slice of a FLAC, or a 16 kHz waveform)."""
    if (options.ctc_weight > 0 or options.ctc_only) and model.ctc_head is None:
        raise ValueError("joint CTC decoding needs a model trained with a CTC head (model.ctc_weight > 0)")
    from jstip.model.batching import load_slice

    wave = load_slice(audio) if isinstance(audio, AudioSlice) else audio
    device = next(model.parameters()).device
    wave = wave.to(device)
    if options.ctc_only:
        frames, lengths = model.encoder([wave])
        return ctc_best_path(model, model.ctc_log_probs(frames[0, :int(lengths[0])]).cpu())
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
        scorer = CTCPrefixScorer(model.ctc_log_probs(frames[0, :int(lengths[0])]).cpu(), blank=model.token_units.blank)
    tokens = _beam_search(model, prefix, options, max_tokens, scorer)
    return tok.decode(tokens, skip_special_tokens=True).strip()


def _ctc_scores(model: SpeechLLM, scorer: CTCPrefixScorer, beams: list[_Beam], candidates: list[tuple[int, int]],
                eos: int) -> list[tuple[float, torch.Tensor | None, UnitState]]:
    """(CTC prefix score, state r, unit state) of every (beam index, token) candidate, all extended together:
    round j extends every candidate that adds a j-th unit."""
    out: list = [None] * len(candidates)
    pending = []  # (candidate index, units, new unit state)
    for i, (b, token) in enumerate(candidates):
        beam = beams[b]
        if token == eos:
            out[i] = (scorer.final((beam.ctc_r, beam.ctc, None)), None, beam.units)
            continue
        units, state = model.token_units.extend(beam.units, token)
        if not units:  # e.g. punctuation: the CTC prefix does not change
            out[i] = (beam.ctc, beam.ctc_r, state)
        else:
            pending.append((i, units, state))
    if pending:
        r = torch.stack([beams[candidates[i][0]].ctc_r for i, _, _ in pending])
        last = torch.tensor([-1 if beams[candidates[i][0]].units.last is None else beams[candidates[i][0]].units.last
                             for i, _, _ in pending])
        scores = torch.zeros(len(pending), dtype=torch.float64)
        for j in range(max(len(u) for _, u, _ in pending)):
            active = torch.tensor([k for k, (_, u, _) in enumerate(pending) if len(u) > j])
            unit = torch.tensor([pending[k][1][j] for k in active.tolist()])
            psi, r_new = scorer.extend_many(r[active], last[active], unit)
            scores[active] = psi
            r[active] = r_new
            last[active] = unit
        for k, (i, _, state) in enumerate(pending):
            out[i] = (float(scores[k]), r[k], state)
    return out


def _beam_search(model: SpeechLLM, prefix: torch.Tensor, options: DecodeOptions, max_tokens: int,
                 scorer: CTCPrefixScorer | None) -> list[int]:
    from transformers import DynamicCache

    eos = model.tokenizer.eos_token_id
    embed = model.llm.get_input_embeddings()
    cache = DynamicCache()
    out = model.llm(inputs_embeds=prefix, past_key_values=cache, use_cache=True)
    logits = out.logits[:, -1].float().log_softmax(-1)  # (beams, vocab)
    initial_r = scorer.initial_state()[0] if scorer else None
    beams = [_Beam([], 0.0, 0.0, initial_r, UnitState())]
    finished: list[_Beam] = []
    lam = options.ctc_weight
    width = options.beam_size
    for _ in range(max_tokens):
        if scorer is None:
            top_lp, top_ids = logits.topk(min(width, logits.shape[-1]), dim=-1)
            pairs = [(b, int(t)) for b in range(len(beams)) for t in top_ids[b].tolist()]
        else:
            pairs = _joint_candidates(model, scorer, beams, logits, options, eos)
        log_probs = logits.cpu()
        llm_scores = [beams[b].llm + float(log_probs[b, token]) for b, token in pairs]
        if scorer is None:
            ctc = [(0.0, None, beams[b].units) for b, _ in pairs]
        else:
            ctc = _ctc_scores(model, scorer, beams, pairs, eos)
        order = sorted(range(len(pairs)), key=lambda i: (1 - lam) * llm_scores[i] + lam * ctc[i][0], reverse=True)
        next_beams, parents = [], []
        for i in order:
            b, token = pairs[i]
            ctc_score, ctc_r, units = ctc[i]
            if (1 - lam) * llm_scores[i] + lam * ctc_score == NEG_INF:
                continue
            unitless = scorer is not None and token != eos and units == beams[b].units and ctc_r is beams[b].ctc_r
            if unitless and beams[b].unitless:
                continue  # punctuation after punctuation: a way around the CTC, never in a transcript
            beam = _Beam(beams[b].tokens + [token], llm_scores[i], ctc_score, ctc_r, units, unitless)
            if token == eos:
                finished.append(beam)
            else:
                next_beams.append(beam)
                parents.append(b)
            if len(next_beams) >= width or len(finished) >= width:
                break
        if not next_beams or len(finished) >= width:
            break
        beams = next_beams
        cache.reorder_cache(torch.tensor(parents, device=prefix.device))
        step_ids = torch.tensor([[b.tokens[-1]] for b in beams], device=prefix.device)
        out = model.llm(inputs_embeds=embed(step_ids), past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1].float().log_softmax(-1)
    pool = finished or beams
    if scorer is not None:
        # the CTC term at EOS already weighs the whole audio, so a short hypothesis is no bargain
        best = max(pool, key=lambda b: b.score(lam))
    else:
        best = max(pool, key=lambda b: b.score(lam) / len(b.tokens) if b.tokens else NEG_INF)
    return [t for t in best.tokens if t != eos and t != pad_id(model.tokenizer)]


def _joint_candidates(model: SpeechLLM, scorer: CTCPrefixScorer, beams: list[_Beam], logits: torch.Tensor,
                      options: DecodeOptions, eos: int) -> list[tuple[int, int]]:
    """(beam index, token) pairs to score: per beam the LLM's `ctc_candidates` best tokens, EOS, and as
    many tokens proposed by the CTC head: the LLM's best among the tokens whose first unit is one of the
    CTC's `ctc_next_units` likeliest next units. So a word the LLM ranks low (a name it never saw) can
    still be spelled when the audio says it."""
    import numpy as np

    units = model.token_units
    k = max(options.beam_size, options.ctc_candidates)
    log_probs = logits.cpu()
    pairs: list[tuple[int, int]] = []
    all_units = torch.arange(units.size)
    for b, beam in enumerate(beams):
        chosen = dict.fromkeys(log_probs[b].topk(min(k, log_probs.shape[1])).indices.tolist())
        chosen[eos] = None
        last = -1 if beam.units.last is None else beam.units.last
        psi, _ = scorer.extend_many(beam.ctc_r[None].expand(units.size, -1, -1),
                                    torch.full((units.size,), last), all_units)
        likely = psi.topk(min(options.ctc_next_units, units.size)).indices.numpy()
        first = units.first_units(beam.units)
        consistent = np.flatnonzero(np.isin(first, likely))
        if consistent.size:
            scores = log_probs[b, torch.from_numpy(consistent)]
            best = consistent[scores.topk(min(options.ctc_candidates, consistent.size)).indices.numpy()]
            chosen.update(dict.fromkeys(best.tolist()))
        pairs += [(b, token) for token in chosen]
    return pairs
