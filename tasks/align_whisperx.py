"""WhisperX forced alignment (a wav2vec2 CTC model) behind the `WordAligner` interface.

`WhisperXAligner(config)` loads `config.align.model` once: a hub id or a local directory holding a
transformers `Wav2Vec2ForCTC` + `Wav2Vec2Processor` (torchaudio bundle names are not supported, see below).
`align(text, samples, rate)` runs the real `whisperx.alignment.align` on the whole utterance as ONE segment
and returns one WordTiming per word of split_words(text).

Text handed to whisperx. A wav2vec2 character vocabulary holds letters (and maybe an apostrophe), so each
transcript token is replaced by its preferred spoken words (`textnorm.preferred_words`, which applies
textnorm's context rules: "$250" -> two hundred fifty dollars; while textnorm is absent,
`align.spoken_forms(token)[0]`), then fitted to the model's vocabulary: lowercased, accents folded to its
letters where NFKD gives one ("façade" -> facade), characters it lacks that are not letters (an apostrophe,
for some vocabularies) dropped; a letter with no counterpart in the vocabulary is kept and whisperx aligns
it to its wildcard column. The spoken words are joined by single spaces (whisperx splits words on " "),
and each spoken word remembers its token: a token's span is the start of its first spoken word to the end
of its last, its score the character-weighted mean of their whisperx scores (each the mean per-frame CTC
probability of the word's characters, 0..1), which is whisperx's own word score for a one-word token.

Nothing is dropped silently: whisperx logs a warning and returns a segment without words when the CTC
backtrack fails (audio too short for the characters) — that, or any other count mismatch, raises
AlignmentFailed("words_missing") quoting whisperx's warning. We call whisperx with interpolate_method="ignore"
so a word whisperx could not time (none of its characters aligned) stays untimed instead of copying its
neighbour's span ("nearest"); such a word raises AlignmentFailed("words_untimed") rather than being given a
made-up span (with whisperx 3.8.6's wildcard column it does not happen for non-empty words).

Length: wav2vec2 takes the whole segment in one forward pass and WhisperX segments are <= 30 s; the text of
a segment must be known, and splitting audio at word-agnostic points would need to know which words fall
in which piece, so audio over MAX_SEGMENT_S raises AlignmentFailed("too_long") (checks.max_duration keeps
utterances at or under 30 s anyway).

whisperx 3.8.6 traps handled here (installed --no-deps on torch 2.13 CPU, see ENVIRONMENT.md):
- `whisperx/alignment.py` does `import torchaudio` at module top only to test
  `model_name in torchaudio.pipelines.__all__`; no torchaudio loads with torch 2.13 CPU. While (and only
  while) `whisperx.alignment` is imported, and only if no torchaudio is already imported, a stub module
  with an empty `pipelines.__all__` sits in sys.modules; it carries a real `__spec__` because
  transformers probes modules with importlib.util.find_spec, which raises on `__spec__ = None`.
  transformers' Wav2Vec2 classes are imported before the stub goes in so its availability probes never
  see it. whisperx.alignment keeps its reference to the stub, so every model name is treated as a
  transformers model (hub id or directory).
- `align` loads the NLTK punkt_tab sentence splitter for every segment and calls `nltk.download` when the
  data is missing (no network here). The text we hand over has no punctuation, so punkt would return one
  sentence spanning the whole text; for the duration of our `align` call (under a lock),
  `whisperx.alignment.nltk_load` answers punkt requests with a splitter returning exactly that span, so no
  NLTK data is read and no download is attempted, wherever punkt data is or is not installed. The lock
  serialises whisperx alignment between threads of one process (parallel shards: use processes).
- audio is passed as a float32 16 kHz numpy array (a path would go through ffmpeg, not installed); other
  rates are resampled with soxr.
- output numbers are numpy floats rounded to ms: converted to Python floats, clipped to the audio.
- `load_align_model` prints the loading error and raises a generic ValueError; we capture the print and
  raise AlignModelError naming the model and the reason. A local directory is loaded with
  local_files_only (never a hub request); a hub id obeys HF_HUB_OFFLINE.
- importing whisperx configures its "whisperx" logger (own stdout handler, propagate=False); we leave that
  as is and read its warnings through a handler on "whisperx.alignment" during each call.
config.batch_size is not used: whisperx aligns one segment per forward pass.

Frame times. wav2vec2's convolutional feature encoder has no padding: with the kernels and strides of its
config ((10,3,3,3,3,2,2) and (5,2,2,2,2,2,2) for the base/large models) output frame k sees samples
[k x 320, k x 320 + 400), i.e. it is centred on k x 20 ms + 12.5 ms, and an N-sample segment gives
floor((N - 400) / 320) + 1 frames. whisperx converts a character on frames [a, b] to [a x r, (b + 1) x r)
with r = duration / frames, slightly over 20 ms (so times drift late by up to 5 ms over a segment) and
counting from the window's start. The boundaries between frame centres lie at a x 20 ms + 2.5 ms and
(b + 1) x 20 ms + 2.5 ms: `_FrameGeometry` recovers the frame indices from whisperx's times (rounded to
1 ms, far below a frame) and places them there.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import io
import logging
import os
import sys
import threading
import types
import unicodedata
from pathlib import Path
from typing import ClassVar

import numpy as np

from jstip.config import AlignConfig
from jstip.tasks.align import (AlignmentFailed, UtteranceAlignment, WordTiming, check_ctc_transcript,
                               ctc_greedy_text)
from jstip.tasks.text import split_words

try:
    from jstip.tasks.textnorm import preferred_words
except ImportError:  # before textnorm: align.py's spoken_forms, first form of each token, no context rules
    from jstip.tasks.align import spoken_forms

    def preferred_words(text: str) -> tuple[list[str], list[int]]:
        words: list[str] = []
        token_index: list[int] = []
        for i, token in enumerate(split_words(text)):
            form = next(iter(spoken_forms(token)), ())
            words.extend(form)
            token_index.extend([i] * len(form))
        return words, token_index

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # whisperx.audio.SAMPLE_RATE: the rate its frame-to-seconds arithmetic assumes
MAX_SEGMENT_S = 30.0  # one wav2vec2 forward pass per segment; WhisperX segments are <= 30 s
# jstip transcripts are English; the language only selects whisperx's word splitting (spaces) and punkt model.
LANGUAGE = "en"

# Serialises our patch of whisperx.alignment.nltk_load (a module global) across threads.
_WHISPERX_CALL = threading.Lock()


class AlignModelError(ValueError):
    """The configured align.model could not be loaded (names the model and why)."""


# --------------------------------------------------------------------------------------------------
# Importing and calling whisperx


def _torchaudio_stub() -> types.ModuleType:
    module = types.ModuleType("torchaudio", "jstip stub: whisperx.alignment only reads pipelines.__all__")
    module.__spec__ = importlib.machinery.ModuleSpec("torchaudio", loader=None)
    module.pipelines = types.SimpleNamespace(__all__=[])
    return module


def _import_whisperx_alignment() -> types.ModuleType:
    """`whisperx.alignment`, imported with a torchaudio stub in sys.modules only during its import."""
    if "whisperx.alignment" in sys.modules:
        return sys.modules["whisperx.alignment"]
    # Resolve transformers' lazy Wav2Vec2 imports (and their torchaudio probes) before the stub exists.
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor  # noqa: F401

    stub = None
    if "torchaudio" not in sys.modules:
        stub = sys.modules["torchaudio"] = _torchaudio_stub()
    try:
        import whisperx.alignment as alignment
    finally:
        if stub is not None and sys.modules.get("torchaudio") is stub:
            del sys.modules["torchaudio"]
    return alignment


class _OneSentence:
    """Stands in for NLTK's punkt splitter: the whole (punctuation-free) text is one sentence."""

    @staticmethod
    def span_tokenize(text: str):
        return [(0, len(text))] if text else []


class _CollectWarnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _whisperx_call(alignment: types.ModuleType):
    """Around one whisperx `align` call: punkt requests answered by _OneSentence, warnings collected."""
    original = alignment.nltk_load

    def nltk_load(resource_url, *args, **kwargs):
        if str(resource_url).startswith("tokenizers/punkt"):
            return _OneSentence()
        return original(resource_url, *args, **kwargs)

    collected = _CollectWarnings()
    logger = logging.getLogger(alignment.__name__)
    with _WHISPERX_CALL:
        alignment.nltk_load = nltk_load
        logger.addHandler(collected)
        try:
            yield collected.messages
        finally:
            logger.removeHandler(collected)
            alignment.nltk_load = original


def _load_model(alignment: types.ModuleType, model: str, device: str):
    """whisperx.load_align_model for a local directory or a hub id, with an error that says which and why."""
    path = Path(model).expanduser()
    local = path.exists() or model.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in model)
    if local and not path.is_dir():
        raise AlignModelError(
            f"align.model {model!r}: no such directory {path} (whisperx needs a local directory holding a "
            "transformers Wav2Vec2ForCTC + Wav2Vec2Processor, or a hub id)")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # load_align_model prints the real error, raises a vague one
            # a local directory is read with local_files_only: never a hub request, whatever HF_HUB_OFFLINE says
            return alignment.load_align_model(LANGUAGE, device, model_name=str(path) if local else model,
                                              model_cache_only=local)
    except (ValueError, OSError, RuntimeError, AssertionError) as e:
        lines = [line for line in printed.getvalue().splitlines() if line.strip()
                 and not line.startswith("Error loading model from huggingface")]
        detail = (lines[0] if lines else str(e))[:400]
        where = f"directory {path}" if local else "hub id"
        hint = ("; HF_HUB_OFFLINE is set, so a hub id must already be in the local Hugging Face cache"
                if not local and os.environ.get("HF_HUB_OFFLINE") else "")
        raise AlignModelError(f"align.model {model!r} ({where}, device {device!r}): cannot load a wav2vec2 CTC "
                              f"model + processor: {detail}{hint}") from e


# --------------------------------------------------------------------------------------------------
# From transcript tokens to the characters the model knows


def _fit_to_vocabulary(word: str, dictionary) -> str:
    """`word` in the model's characters: accents folded where possible, unknown punctuation dropped."""
    out = []
    for char in word.lower():
        if char.isspace() or char == "|":  # whisperx's word separator and wav2vec2's word delimiter
            continue
        if char in dictionary:
            out.append(char)
            continue
        folded = "".join(c for c in unicodedata.normalize("NFKD", char) if c in dictionary and c != "|")
        if folded:
            out.append(folded)
        elif unicodedata.category(char).startswith("L"):
            out.append(char)  # a letter the model lacks: whisperx aligns it to its wildcard column
        # anything else (an apostrophe or digit the vocabulary lacks) is not heard as a character: dropped
    if not out:  # nothing known at all: let whisperx align the word's characters as wildcards
        out = [c for c in word.lower() if not c.isspace() and c != "|"]
    return "".join(out)


def spoken_words(text: str, dictionary) -> tuple[list[str], list[int]]:
    """The words whisperx aligns for `text`, in the model's characters, and the split_words token of each.

    Raises AlignmentFailed("no_pronunciation") when a token is left without a word.
    """
    words: list[str] = []
    owners: list[int] = []
    for word, owner in zip(*preferred_words(text)):
        fitted = _fit_to_vocabulary(word, dictionary)
        if fitted:
            words.append(fitted)
            owners.append(owner)
    owned = set(owners)
    unspeakable = [t for i, t in enumerate(split_words(text)) if i not in owned]
    if unspeakable:
        raise AlignmentFailed("no_pronunciation", f"token(s) {unspeakable} have no spoken form the aligner can use")
    return words, owners


# --------------------------------------------------------------------------------------------------
# The aligner


class WhisperXAligner:
    """Forced alignment with whisperx's CTC aligner and a transformers wav2vec2 model (see module docstring).

    Word score: mean per-frame CTC probability of the token's characters (0..1), as whisperx scores words.
    """

    name: ClassVar[str] = "whisperx"

    def __init__(self, config: AlignConfig):
        if not config.model:
            raise AlignModelError("align.model is required for the whisperx aligner (a hub id or a local "
                                  "directory of a transformers Wav2Vec2ForCTC + Wav2Vec2Processor)")
        self.config = config
        self.device = config.device
        self._alignment = _import_whisperx_alignment()
        self._model, self._metadata = _load_model(self._alignment, config.model, config.device)
        self.dictionary: dict[str, int] = self._metadata["dictionary"]
        # transcript verification reads the emissions whisperx computes (no second forward pass)
        self._emissions: list = []
        if config.verify.enabled and config.verify.max_ctc_cer is not None and hasattr(self._model, "register_forward_hook"):
            self._model.register_forward_hook(lambda module, args, output: self._emissions.append(
                getattr(output, "logits", output)[0].detach().cpu()))

    def _greedy_text(self, emission) -> str:
        return _greedy_text_of(emission, self.dictionary)

    def align(self, text: str, samples: np.ndarray, sampling_rate: int = SAMPLE_RATE) -> UtteranceAlignment:
        tokens = split_words(text)
        if not tokens:
            raise AlignmentFailed("no_words", "transcript has no words to align")
        words, owners = spoken_words(text, self.dictionary)
        audio = _float_audio(samples, sampling_rate)
        duration = len(audio) / SAMPLE_RATE
        if duration > MAX_SEGMENT_S:
            raise AlignmentFailed("too_long", f"audio is {duration:.2f} s; whisperx aligns one segment of at most "
                                  f"{MAX_SEGMENT_S:g} s per forward pass", value=f"{duration:.2f}",
                                  threshold=f"{MAX_SEGMENT_S:g}")
        segment = {"start": 0.0, "end": duration, "text": " ".join(words)}
        self._emissions.clear()
        with _whisperx_call(self._alignment) as warnings:
            result = self._alignment.align([segment], self._model, self._metadata, audio, self.device,
                                           interpolate_method="ignore")
        if self._emissions:  # transcript verification (align.verify.max_ctc_cer)
            check_ctc_transcript(self._greedy_text(self._emissions[-1]), " ".join(words), self.config)
        aligned = result["word_segments"]
        if [w.get("word") for w in aligned] != words:
            said = f" (whisperx: {'; '.join(warnings)})" if warnings else ""
            raise AlignmentFailed("words_missing", f"whisperx aligned {len(aligned)} of {len(words)} spoken words"
                                  f"{said}", value=str(len(aligned)), threshold=str(len(words)))
        untimed = [w["word"] for w in aligned if not (_finite(w.get("start")) and _finite(w.get("end")))]
        if untimed:
            raise AlignmentFailed("words_untimed", f"whisperx could not place spoken word(s) {untimed[:10]} in the "
                                  "audio (none of their characters aligned)", value=str(len(untimed)), threshold="0")
        geometry = _FrameGeometry.of(self._model, len(audio))
        if geometry is not None:
            aligned = [{**w, "start": geometry.boundary(w["start"]), "end": geometry.boundary(w["end"])}
                       for w in aligned]
        return UtteranceAlignment(_token_timings(aligned, owners, len(tokens), duration), attempts=1)


class _FrameGeometry:
    """Where wav2vec2's output frames sit in an N-sample segment (module docstring, "Frame times")."""

    def __init__(self, receptive: int, stride: int, frames: int, samples: int):
        self.stride_s, self.offset_s = stride / SAMPLE_RATE, (receptive - stride) / 2 / SAMPLE_RATE
        self.whisperx_frame_s = samples / SAMPLE_RATE / frames  # whisperx's `ratio`

    @classmethod
    def of(cls, model, samples: int) -> _FrameGeometry | None:
        config = getattr(model, "config", None)
        kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
        if not kernels or not strides:
            return None  # not a wav2vec2-style feature encoder: whisperx's times as they are
        receptive, stride, frames = 1, 1, samples
        for kernel, step in zip(kernels, strides):
            receptive += (kernel - 1) * stride
            stride *= step
            frames = (frames - kernel) // step + 1
        return cls(receptive, stride, frames, samples) if frames > 0 else None

    def boundary(self, t: float) -> float:
        """whisperx's time of boundary k (k x its ratio) -> midway between the centres of frames k-1 and k."""
        return round(float(t) / self.whisperx_frame_s) * self.stride_s + self.offset_s


def _greedy_text_of(emission, dictionary: dict[str, int]) -> str:
    labels = {i: c for c, i in dictionary.items()}
    blank = next((i for c, i in dictionary.items() if c in ("[pad]", "<pad>")), 0)  # as whisperx finds it
    return ctc_greedy_text(emission.argmax(dim=-1).numpy(), blank,
                           lambda ids: "".join(" " if labels.get(i) == "|" else labels.get(i, "") for i in ids))


def _finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def _float_audio(samples: np.ndarray, sampling_rate: int) -> np.ndarray:
    audio = np.asarray(samples)
    if audio.ndim != 1:
        raise AlignmentFailed("audio_unreadable", f"expected mono samples, got shape {audio.shape}")
    audio = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio.astype(np.float32)
    if sampling_rate != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, sampling_rate, SAMPLE_RATE).astype(np.float32)
    return np.ascontiguousarray(audio)


def _token_timings(aligned: list[dict], owners: list[int], n_tokens: int, duration: float) -> list[WordTiming]:
    """Spoken-word timings folded back onto transcript tokens: first start, last end, char-weighted score."""
    timings = []
    by_token: list[list[dict]] = [[] for _ in range(n_tokens)]
    for word, owner in zip(aligned, owners):
        by_token[owner].append(word)
    for index, spoken in enumerate(by_token):
        start = min(max(float(spoken[0]["start"]), 0.0), duration)
        end = min(max(float(spoken[-1]["end"]), 0.0), duration)
        scored = [(float(w["score"]), len(w["word"])) for w in spoken if _finite(w.get("score"))]
        score = sum(s * n for s, n in scored) / sum(n for _, n in scored) if scored else None
        timings.append(WordTiming(index, start, end, score))
    return timings
