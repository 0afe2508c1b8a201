"""Training sequences -> token layouts -> padded batches.

Layout of one sequence (positions left to right):

    <bos>? prompt-tokens  [seg 1] [seg 2] ... [seg K]  <eos>
    text segment:   " " + text, tokenized       label = the token ids if segment.loss else ignored
    speech segment: <speech-start> e_1 .. e_n <speech-end>      labels ignored; n = embeddings of its audio

Labels are ignored (IGNORE_INDEX) on the BOS, the prompt, every speech and marker position, and on text
segments without loss; they are the token id on every other text position and on the final EOS (the
model must learn to stop). transformers shifts labels by one inside the LM, so label i is predicted from
positions < i.

Every text segment is tokenized as " " + text: a word then has the same tokens wherever a plan cut the
sentence (byte-level BPE tokenizers such as GPT-2's, Llama 3's or Qwen's mark a word's leading space).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch

from jstip.model.ctc import TokenUnits
from jstip.model.speech_llm import (IGNORE_INDEX, KIND_SPEECH, KIND_SPEECH_END, KIND_SPEECH_START, KIND_TEXT,
                                    Batch)
from jstip.schemas.sequences import AudioSlice, TrainingSequence


@dataclass
class Layout:
    sequence_id: str
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    speech: list[AudioSlice] = field(default_factory=list)
    speech_targets: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def _extend(self, ids: list[int], labels: list[int], kind: int) -> None:
        self.input_ids += ids
        self.labels += labels
        self.kinds += [kind] * len(ids)


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(" " + text, add_special_tokens=False).input_ids


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def lay_out(sequence: TrainingSequence, tokenizer, embeddings_for_samples: Callable[[int], int],
            *, end_with_eos: bool = True, ctc_targets: Callable[[str], list[int]] | None = None) -> Layout:
    """The positions, labels and kinds of one sequence. `end_with_eos=False` leaves the sequence open
    (a decoding prefix). `ctc_targets`: a speech span's CTC target from its words (default: their token
    ids; SpeechLLM.ctc_targets for the model's CTC units)."""
    layout = Layout(sequence.sequence_id)
    if tokenizer.bos_token_id is not None:
        layout._extend([tokenizer.bos_token_id], [IGNORE_INDEX], KIND_TEXT)
    if sequence.prompt:
        ids = text_ids(tokenizer, sequence.prompt)
        layout._extend(ids, [IGNORE_INDEX] * len(ids), KIND_TEXT)
    pad = pad_id(tokenizer)
    for segment in sequence.segments:
        if segment.modality == "text":
            ids = text_ids(tokenizer, segment.text)
            layout._extend(ids, ids if segment.loss else [IGNORE_INDEX] * len(ids), KIND_TEXT)
        else:
            n = embeddings_for_samples(segment.audio.num_samples)
            layout._extend([pad], [IGNORE_INDEX], KIND_SPEECH_START)
            layout._extend([pad] * n, [IGNORE_INDEX] * n, KIND_SPEECH)
            layout._extend([pad], [IGNORE_INDEX], KIND_SPEECH_END)
            layout.speech.append(segment.audio)
            layout.speech_targets.append(ctc_targets(segment.text) if ctc_targets else text_ids(tokenizer, segment.text))
    if end_with_eos:
        layout._extend([tokenizer.eos_token_id], [tokenizer.eos_token_id], KIND_TEXT)
    return layout


class AudioError(RuntimeError):
    pass


def load_slice(audio: AudioSlice) -> torch.Tensor:
    """The slice's samples as float32, read from the FLAC without decoding the rest of the file."""
    try:
        samples, rate = sf.read(audio.path, start=audio.start_sample, stop=audio.end_sample, dtype="float32",
                                always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"cannot read samples [{audio.start_sample}, {audio.end_sample}) of {audio.path}: {e}") from None
    if rate != 16000:
        raise AudioError(f"{audio.path}: {rate} Hz; the speech-LLM takes the normalised 16 kHz audio")
    if samples.shape[0] != audio.num_samples:
        raise AudioError(f"{audio.path}: asked for samples [{audio.start_sample}, {audio.end_sample}) but the "
                         f"file ends after {audio.start_sample + samples.shape[0]}")
    return torch.from_numpy(np.ascontiguousarray(samples))


def collate(layouts: list[Layout], tokenizer, load=load_slice) -> Batch:
    """Right-pad the layouts into one batch and read their speech spans."""
    length = max(len(x) for x in layouts)
    pad = pad_id(tokenizer)
    input_ids = torch.full((len(layouts), length), pad, dtype=torch.long)
    labels = torch.full((len(layouts), length), IGNORE_INDEX, dtype=torch.long)
    kinds = torch.full((len(layouts), length), KIND_TEXT, dtype=torch.long)
    attention = torch.zeros((len(layouts), length), dtype=torch.long)
    for i, x in enumerate(layouts):
        n = len(x)
        input_ids[i, :n] = torch.tensor(x.input_ids)
        labels[i, :n] = torch.tensor(x.labels)
        kinds[i, :n] = torch.tensor(x.kinds)
        attention[i, :n] = 1
    # row-major order of speech positions = layouts in order, spans in order within each
    speech = [load(a) for x in layouts for a in x.speech]
    targets = [t for x in layouts for t in x.speech_targets]
    return Batch(input_ids, labels, attention, kinds, speech, targets, [x.sequence_id for x in layouts])


@dataclass(frozen=True)
class BatchLayout:
    """What laying out and collating a batch needs from a model, without the model (SpeechLLM.batch_layout):
    small and picklable, so DataLoader workers build batches whatever their start method."""

    tokenizer: object
    num_frames: Callable[[int], int]  # encoder frames of a span of n samples (the encoder's pure arithmetic)
    stack: int  # encoder frames per LLM embedding
    token_units: TokenUnits

    def embeddings_for_samples(self, num_samples: int) -> int:
        return -(-self.num_frames(num_samples) // self.stack)

    def ctc_targets(self, text: str) -> list[int]:
        return self.token_units.targets(text, self.tokenizer)

    def __call__(self, sequences: list[TrainingSequence], load=load_slice) -> Batch:
        """The sequences laid out, padded into one batch, their speech spans read from the audio pool."""
        layouts = [lay_out(s, self.tokenizer, self.embeddings_for_samples, ctc_targets=self.ctc_targets)
                   for s in sequences]
        return collate(layouts, self.tokenizer, load)
