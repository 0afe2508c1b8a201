"""Forced word alignment with a NeMo CTC model: Viterbi over the model's log-probs, batched.

`NemoAligner(config)` loads `config.model` once: a `.nemo` file (`restore_from`) or a NeMo pretrained name
(`from_pretrained`, which needs the network or a filled NeMo cache). CTC models only: EncDecCTCModel (char),
EncDecCTCModelBPE, and the CTC decoder of a hybrid RNNT-CTC BPE model. `align_batch` runs `config.batch_size`
utterances per forward pass; `align` is one utterance through the same path.

The Viterbi pass is NeMo Forced Aligner's own, from the wheel (nemo/collections/asr/parts/utils/
aligner_utils.py): `get_batch_variables` (fed our log-probs as hypotheses, so no files or manifests),
`viterbi_decoding` and `add_t_start_end_to_utt_obj`.

Text: each transcript token (split_words) becomes its preferred spoken form (the first of
`textnorm.normalize_for_alignment`, i.e. `spoken_forms(token)` reordered by the neighbouring tokens;
lowercase: "250" -> "two hundred fifty"), characters outside the model's vocabulary removed. The model
aligns those words; a token's span runs from the start of its first word to the end of its last. A token
with nothing left to align (no spoken form, or no character the model knows, e.g. Cyrillic under an
English model) fails the utterance (`no_pronunciation` / `out_of_vocabulary`) rather than vanishing or
borrowing a neighbour's time.

Frames to seconds: one output frame lasts hop_length / sample_rate of the preprocessor times the encoder's
subsampling factor: 10 ms x 2 = 20 ms (QuartzNet), x 4 = 40 ms (Conformer-CTC), x 8 = 80 ms (Citrinet,
FastConformer/Parakeet). Where in time a frame sits: the preprocessor's STFT is centred (torch.stft
center=True, NeMo's default `exact_pad: false`), so feature frame k is centred on sample k x hop; the
encoder's striding convolutions are padded to keep centres (output frame j sums input frames around
j x subsampling), so output frame j is centred on j x d (with `exact_pad: true` the centres are half a hop
later). NeMo's own arithmetic (`add_t_start_end_to_utt_obj`) puts a token on frames [a, b] at [a x d,
(b + 1) x d): the start of frame a's *span* if frames were d-long boxes starting at their index, i.e. half
a frame (20 ms at 40 ms frames, 40 ms at 80 ms) later than the boundaries between frame centres, which lie
at (a - 1/2) x d and (b + 1/2) x d. We move both by that half frame (`frame_offset_s`), clipped to the audio.

Word score: mean log-probability (nats per frame, <= 0, floored at -100) of the Viterbi path over the
token's frames; comparable across utterances aligned by the same model, not across models or aligners.

Traps handled here:
- CTC needs at least one frame per token plus one for the blank between two equal tokens ("ll"); with
  fewer frames NeMo's get_utt_obj silently returns an empty alignment, so we check first
  (`audio_too_short`).
- A model's preprocessor dithers and pads to a multiple of 16 frames unless told not to; both are turned
  off (as NeMo's transcribe does) so that a batch gives the same alignment as one utterance at a time.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from jstip.config import AlignConfig
from jstip.tasks.align import (AlignmentFailed, UtteranceAlignment, WordTiming, check_ctc_transcript,
                               ctc_greedy_text)
from jstip.tasks.text import split_words

try:  # the shared text normaliser: spoken forms per token, reordered by context ("No. 5" -> number five)
    from jstip.tasks.textnorm import normalize_for_alignment as _token_forms
except ImportError:  # pragma: no cover - older trees: the pocketsphinx aligner's spoken_forms, no context
    from jstip.tasks.align import spoken_forms

    def _token_forms(text: str) -> list[list[tuple[str, ...]]]:
        return [spoken_forms(token) for token in split_words(text)]

log = logging.getLogger(__name__)

# SentencePiece control/byte pieces ("<unk>", "<s>", "<0x41>") and the word-start marker hold no
# characters a transcript could use.
_SPECIAL_PIECE = re.compile(r"^<[^>]+>$")
_WORD_START = "\u2581"


@dataclass
class _Prepared:
    """One utterance ready for the model: its audio, the text the model aligns, and the way back."""

    index: int  # position in align_batch's input
    audio: np.ndarray  # float32 mono at the model's sampling rate
    duration: float  # seconds, of the input as given (resampling may add a fraction of a sample)
    model_text: str  # model words joined by spaces
    token_words: list[tuple[int, int]]  # per transcript token: (first, last) model word
    token_ids: list[int]  # non-blank model tokens of model_text, in order (for the frame check)


def _quiet_nemo() -> None:
    """NeMo logs every restore and every batch at INFO through its own logger; keep warnings only."""
    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(logging.WARNING)


def load_model(model: str, device: str):
    """A NeMo ASR model with a CTC head, in eval mode on `device`; errors name the model and the fix."""
    import torch

    _quiet_nemo()
    from nemo.collections.asr.models import ASRModel

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"align.device is {device!r} but torch sees no CUDA device (torch {torch.__version__})")
    path = Path(model).expanduser()
    # a hub id ("nvidia/parakeet-ctc-0.6b") has one slash and no leading one; anything else with a slash is a path
    if model.endswith(".nemo") or path.exists() or ("/" in model and not re.fullmatch(r"[\w.-]+/[\w.-]+", model)):
        if not path.is_file():
            raise FileNotFoundError(f"align.model: NeMo model file not found: {path} (give a .nemo file or a "
                                    "NeMo pretrained model name)")
        try:
            asr_model = ASRModel.restore_from(str(path), map_location=torch.device(device))
        except Exception as e:  # NeMo raises anything from tarfile, OmegaConf, hydra
            raise RuntimeError(f"align.model: cannot restore NeMo model from {path}: {type(e).__name__}: {e}") from e
    else:
        try:
            asr_model = ASRModel.from_pretrained(model, map_location=torch.device(device))
        except Exception as e:
            raise RuntimeError(
                f"align.model: cannot load NeMo pretrained model {model!r}: {type(e).__name__}: {e}. Offline, "
                f"download it elsewhere (ASRModel.from_pretrained({model!r}).save_to('model.nemo')) and set "
                "align.model to the .nemo file") from e
    if _ctc_decoder(asr_model) is None:
        raise ValueError(f"align.model {model!r} is a {type(asr_model).__name__}: the nemo aligner needs a CTC "
                         "model (EncDecCTCModel, EncDecCTCModelBPE or a hybrid RNNT-CTC model)")
    if not hasattr(asr_model, "tokenizer") and hasattr(asr_model, "ctc_decoder"):
        # NeMo's get_utt_obj reads a char model's vocabulary from model.decoder, the RNNT decoder here
        raise ValueError(f"align.model {model!r}: character-based hybrid RNNT-CTC models are not supported; "
                         "use a CTC or a BPE hybrid model")
    asr_model.eval()
    featurizer = asr_model.preprocessor.featurizer
    featurizer.dither = 0.0
    featurizer.pad_to = 0
    return asr_model


def _ctc_decoder(asr_model):
    """The module that turns encoder output into CTC log-probs (None for a model without one)."""
    from nemo.collections.asr.models import EncDecCTCModel

    if isinstance(asr_model, EncDecCTCModel):
        return asr_model.decoder
    return getattr(asr_model, "ctc_decoder", None)


class NemoAligner:
    """WordAligner over a NeMo CTC model (see the module docstring for text, frames and scores)."""

    name: ClassVar[str] = "nemo"

    def __init__(self, config: AlignConfig):
        if not config.model:
            raise ValueError("align.model is required for the nemo aligner (a .nemo file or a pretrained name)")
        import torch

        self.config = config
        self.device = torch.device(config.device)
        self.model = load_model(config.model, config.device)
        self.decoder = _ctc_decoder(self.model)
        preprocessor = self.model.preprocessor
        self.sampling_rate = int(self.model.cfg.preprocessor.get("sample_rate", 16000))
        subsampling = int(getattr(self.model.encoder, "subsampling_factor", 1))
        # output frame duration: the feature hop (window_stride, in samples) times the encoder's stride
        self.frame_s = preprocessor.hop_length / self.sampling_rate * subsampling
        # boundaries between frame centres (module docstring): half a frame before NeMo's frame-index times
        centre = preprocessor.hop_length / self.sampling_rate / 2 if getattr(
            getattr(preprocessor, "featurizer", None), "exact_pad", False) else 0.0
        self.frame_offset_s = centre - self.frame_s / 2
        if hasattr(self.model, "tokenizer"):
            pieces = self.model.tokenizer.vocab
            self.n_classes = len(pieces) + 1
            chars = {c for p in pieces if not _SPECIAL_PIECE.match(p) for c in p.replace(_WORD_START, "")}
        else:
            vocabulary = list(self.decoder.vocabulary)
            if " " not in vocabulary:
                raise ValueError(f"align.model {config.model!r}: character vocabulary has no space token; NeMo's "
                                 "aligner separates words with it")
            self.n_classes = len(vocabulary) + 1
            chars = set(vocabulary)
        self.vocabulary = frozenset(chars - {" ", ""})

    # ----------------------------------------------------------------------------------------- text

    def _model_char(self, c: str) -> str:
        if c in self.vocabulary:
            return c
        if c.upper() in self.vocabulary:  # an upper-case-only vocabulary
            return c.upper()
        return ""

    def model_words(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        """The words the model aligns for `text`, and per split_words token its (first, last) word index.

        Raises AlignmentFailed when a token has nothing the model can align.
        """
        words: list[str] = []
        spans: list[tuple[int, int]] = []
        for index, (token, forms) in enumerate(zip(split_words(text), _token_forms(text), strict=True)):
            if not forms:
                raise AlignmentFailed("no_pronunciation", f"word {index} {token!r} has no speakable letters or digits")
            kept = [w for w in ("".join(self._model_char(c) for c in word) for word in forms[0]) if w]
            if not kept:
                raise AlignmentFailed("out_of_vocabulary", f"word {index} {token!r} (spoken {' '.join(forms[0])!r}) "
                                      f"has no character in the model's vocabulary ({self.config.model})")
            spans.append((len(words), len(words) + len(kept) - 1))
            words.extend(kept)
        return words, spans

    def _prepare(self, index: int, text: str, samples: np.ndarray, sampling_rate: int) -> _Prepared:
        from nemo.collections.asr.parts.utils.aligner_utils import get_utt_obj

        if not split_words(text):
            raise AlignmentFailed("no_words", "transcript has no words to align")
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise AlignmentFailed("audio_unreadable", f"expected mono samples, got shape {samples.shape}")
        if len(samples) == 0:
            raise AlignmentFailed("no_speech", "audio is empty")
        audio = (samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16
                 else samples.astype(np.float32))
        if sampling_rate != self.sampling_rate:
            import soxr

            audio = soxr.resample(audio, sampling_rate, self.sampling_rate).astype(np.float32)
        words, spans = self.model_words(text)
        model_text = " ".join(words)
        # T is unknown before the forward pass: a huge T keeps get_utt_obj from giving up on length
        utt = get_utt_obj(model_text, T=1 << 30, model=self.model, segment_separators=None, word_separator=" ")
        # token_ids_with_blanks alternates blank, token, blank, ... (char and BPE alike)
        token_ids = list(utt.token_ids_with_blanks[1::2])
        return _Prepared(index, audio, len(samples) / sampling_rate, model_text, spans, token_ids)

    # -------------------------------------------------------------------------------------- alignment

    def align(self, text: str, samples: np.ndarray, sampling_rate: int = 16000) -> UtteranceAlignment:
        result = self.align_batch([(text, samples, sampling_rate)])[0]
        if isinstance(result, AlignmentFailed):
            raise result
        return result

    def align_batch(self, items: list[tuple[str, np.ndarray, int]]) -> list[UtteranceAlignment | AlignmentFailed]:
        """Align (text, int16 samples, sampling_rate) items, `config.batch_size` per forward pass.

        Returns, in input order, an UtteranceAlignment or the AlignmentFailed that explains why not. Items
        are sorted by length before batching, so a batch holds similar durations and little padding.
        """
        results: list[UtteranceAlignment | AlignmentFailed | None] = [None] * len(items)
        prepared: list[_Prepared] = []
        for i, (text, samples, rate) in enumerate(items):
            try:
                prepared.append(self._prepare(i, text or "", samples, rate))
            except AlignmentFailed as e:
                results[i] = e
            except (RuntimeError, ValueError) as e:  # NeMo's tokenisation of odd text: this item only
                log.exception("nemo: preparing item %d failed", i)
                results[i] = AlignmentFailed("aligner_error", f"{type(e).__name__}: {e}")
        prepared.sort(key=lambda p: len(p.audio))
        size = self.config.batch_size
        for start in range(0, len(prepared), size):
            batch = prepared[start:start + size]
            try:
                aligned = self._align_prepared(batch)
            except (RuntimeError, ValueError) as e:  # e.g. out of memory: one at a time, then give up
                if len(batch) == 1:
                    log.exception("nemo alignment of item %d failed", batch[0].index)
                    aligned = [AlignmentFailed("aligner_error", f"{type(e).__name__}: {e}")]
                else:
                    log.warning("nemo batch of %d failed (%s: %s); aligning them one at a time", len(batch),
                                type(e).__name__, e)
                    aligned = [self.align_batch([items[p.index]])[0] for p in batch]
            for p, result in zip(batch, aligned):
                results[p.index] = result
        return results  # type: ignore[return-value]

    def _log_probs(self, batch: list[_Prepared]):
        """One encoder pass: (B, T_max, V) log-probs on the CPU and the valid frames per item.

        Features are computed one utterance at a time: the STFT's centre padding reflects the signal at its
        end, which a zero-padded batch would replace with silence, changing the last frames (and, through
        the Viterbi pass, the alignment) with the batch's make-up. The encoder masks padded frames.
        """
        import torch

        featurizer = self.model.preprocessor.featurizer
        with torch.inference_mode():
            features, lengths = [], []
            for p in batch:
                signal = torch.from_numpy(p.audio).unsqueeze(0).to(self.device)
                length = torch.tensor([len(p.audio)], dtype=torch.int64, device=self.device)
                f, n = self.model.preprocessor(input_signal=signal, length=length)
                features.append(f[0, :, :int(n[0])])
                lengths.append(int(n[0]))
            padded = torch.full((len(batch), features[0].shape[0], max(lengths)), float(featurizer.pad_value),
                                dtype=features[0].dtype, device=self.device)
            for b, f in enumerate(features):
                padded[b, :, :f.shape[1]] = f
            encoded, encoded_lengths = self.model.encoder(
                audio_signal=padded, length=torch.tensor(lengths, dtype=torch.int64, device=self.device))
            log_probs = self.decoder(encoder_output=encoded)
        if log_probs.shape[-1] != self.n_classes:
            raise ValueError(f"model emits {log_probs.shape[-1]} classes per frame; its vocabulary + blank is "
                             f"{self.n_classes}")
        return log_probs.float().cpu(), encoded_lengths.cpu().tolist()

    def _ids_to_text(self, ids: list[int]) -> str:
        if hasattr(self.model, "tokenizer"):
            return self.model.tokenizer.ids_to_text(ids)
        vocabulary = list(self.decoder.vocabulary)
        return "".join(vocabulary[i] for i in ids if i < len(vocabulary))

    def _align_prepared(self, batch: list[_Prepared]) -> list[UtteranceAlignment | AlignmentFailed]:
        import torch
        from nemo.collections.asr.parts.utils.aligner_utils import (
            Segment, Word, add_t_start_end_to_utt_obj, get_batch_variables, viterbi_decoding)
        from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

        log_probs, frames = self._log_probs(batch)
        out: list[UtteranceAlignment | AlignmentFailed | None] = [None] * len(batch)
        feasible: list[int] = []
        for b, p in enumerate(batch):
            ids = p.token_ids
            needed = len(ids) + sum(1 for x, y in zip(ids, ids[1:]) if x == y)
            if needed > frames[b]:
                out[b] = AlignmentFailed(
                    "audio_too_short", f"{p.duration:.2f} s of audio gives {frames[b]} model frames "
                    f"({self.frame_s * 1000:g} ms each); the transcript needs at least {needed} ({len(ids)} tokens "
                    "plus a blank between repeated ones)", value=str(frames[b]), threshold=str(needed))
            else:
                try:  # transcript verification (align.verify.max_ctc_cer): the model's own greedy transcript
                    greedy = log_probs[b, :frames[b]].argmax(dim=-1).numpy()
                    check_ctc_transcript(ctc_greedy_text(greedy, self.n_classes - 1, self._ids_to_text),
                                         p.model_text, self.config)
                    feasible.append(b)
                except AlignmentFailed as e:
                    out[b] = e
        if not feasible:
            return out  # type: ignore[return-value]

        hypotheses = [Hypothesis(score=0.0, y_sequence=log_probs[b, :frames[b]], text="") for b in feasible]
        lp_batch, y_batch, t_batch, u_batch, utt_objs, _ = get_batch_variables(
            hypotheses, self.model, segment_separators=None, word_separator=" ", has_hypotheses=True,
            gt_text_batch=[batch[b].model_text for b in feasible], output_timestep_duration=self.frame_s,
            verbose=False)
        paths = viterbi_decoding(lp_batch, y_batch, t_batch, u_batch, viterbi_device=self.device)
        for k, b in enumerate(feasible):
            p, path = batch[b], paths[k]
            utt = add_t_start_end_to_utt_obj(utt_objs[k], path, self.frame_s)
            words = [w for s in utt.segments_and_tokens if isinstance(s, Segment)
                     for w in s.words_and_tokens if isinstance(w, Word)]
            n_model_words = len(p.model_text.split(" "))
            if len(words) != n_model_words:
                out[b] = AlignmentFailed("words_missing", f"NeMo aligned {len(words)} word(s); the model text has "
                                         f"{n_model_words}: {p.model_text!r}")
                continue
            # log-prob of the path's token in every frame: the per-frame evidence for a word's score
            path_t = torch.tensor(path, dtype=torch.int64)
            frame_lp = lp_batch[k, torch.arange(len(path)), y_batch[k, path_t]].numpy()
            path_np = np.asarray(path)
            duration = p.duration
            timings = []
            for index, (first, last) in enumerate(p.token_words):
                start = min(max(words[first].t_start + self.frame_offset_s, 0.0), duration)
                end = min(max(words[last].t_end + self.frame_offset_s, 0.0), duration)
                if start >= end:  # only a word squeezed into a final frame that starts at the very end
                    start = max(end - self.frame_s / 2, 0.0)
                in_word = (path_np >= words[first].s_start) & (path_np <= words[last].s_end)
                score = float(frame_lp[in_word].mean()) if in_word.any() else -math.inf
                timings.append(WordTiming(index, float(start), float(end), max(score, -100.0)))
            out[b] = UtteranceAlignment(timings, attempts=1)
        return out  # type: ignore[return-value]
