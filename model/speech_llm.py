"""The speech-LLM: audio encoder -> frame stacking + MLP projector -> a causal LLM's input embeddings.

    speech span (16 kHz) -> log-mel (10 ms) -> encoder (conv: 40 ms, whisper: 20 ms frames)
        -> stack `projector.stack` frames -> MLP -> one LLM embedding per 80 ms (the defaults)
    text span -> the LLM's tokenizer -> the LLM's own token embeddings

A speech span sits between two learned marker embeddings (speech start / speech end), so the LLM sees
where audio begins and ends without adding tokens to its vocabulary (which a frozen LLM could not learn).
The LM loss falls only on text positions whose label is set (jstip.model.batching); the optional CTC head
predicts the LLM's tokens from the encoder frames of each speech span (loss weight `ctc_weight`).

A saved model is a directory (`save_speech_llm`): speech_llm.json (the config, where the LLM comes from),
weights.pt (every trainable tensor: encoder, projector, markers, CTC head, the LLM's trainable weights or
LoRA adapters) and, when the LLM was built here or trained in full, the LLM + tokenizer under llm/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from jstip.model.config import SpeechLLMConfig
from jstip.model.ctc import TokenUnits
from jstip.model.encoder import build_encoder

IGNORE_INDEX = -100  # label of positions without loss (transformers' convention)

# kinds of sequence positions (jstip.model.batching lays them out)
KIND_TEXT, KIND_SPEECH, KIND_SPEECH_START, KIND_SPEECH_END = 0, 1, 2, 3


@dataclass
class Batch:
    input_ids: torch.Tensor  # (batch, length); speech and marker positions hold the pad id
    labels: torch.Tensor  # (batch, length); IGNORE_INDEX where no loss falls
    attention_mask: torch.Tensor  # (batch, length)
    kinds: torch.Tensor  # (batch, length): KIND_*
    speech: list[torch.Tensor]  # waveforms of the speech spans, in row-major order of their positions
    speech_targets: list[list[int]]  # per speech span: token ids of its words (CTC targets)
    sequence_ids: list[str]

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.labels.to(device), self.attention_mask.to(device),
                     self.kinds.to(device), [w.to(device) for w in self.speech], self.speech_targets,
                     self.sequence_ids)

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


class SpeechLLM(nn.Module):
    def __init__(self, config: SpeechLLMConfig, llm: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.encoder = build_encoder(config.encoder)
        hidden = llm.get_input_embeddings().embedding_dim
        stack = config.projector.stack
        self.projector = nn.Sequential(nn.Linear(self.encoder.d_model * stack, config.projector.hidden), nn.GELU(),
                                       nn.Linear(config.projector.hidden, hidden))
        self.speech_start = nn.Parameter(torch.randn(hidden) * 0.02)
        self.speech_end = nn.Parameter(torch.randn(hidden) * 0.02)
        self.vocab_size = llm.get_input_embeddings().num_embeddings
        # CTC over characters or the LLM's tokens, plus a blank (the last index): jstip.model.ctc
        self.token_units = TokenUnits(tokenizer, config.ctc_units)
        self.ctc_head = (nn.Linear(self.encoder.d_model, self.token_units.size + 1) if config.ctc_weight > 0
                         else None)
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)
        if config.freeze_llm:
            self.llm.requires_grad_(False)

    # -- lengths -------------------------------------------------------------------------------------

    def embeddings_for_samples(self, num_samples: int) -> int:
        """LLM input positions a speech span of `num_samples` (16 kHz) occupies, markers excluded."""
        return -(-self.encoder.num_frames(num_samples) // self.config.projector.stack)

    @property
    def seconds_per_embedding(self) -> float:
        return self.encoder.frame_seconds * self.config.projector.stack

    # -- speech --------------------------------------------------------------------------------------

    def encode_speech(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (embeddings of all spans concatenated (total, hidden), encoder frames (spans, T, d), their lengths)."""
        frames, lengths = self.encoder(waves)
        stack = self.config.projector.stack
        pad = (-frames.shape[1]) % stack
        stacked = nn.functional.pad(frames, (0, 0, 0, pad)).reshape(frames.shape[0], -1, frames.shape[2] * stack)
        projected = self.projector(stacked)
        counts = -(-lengths // stack)
        valid = torch.arange(projected.shape[1], device=projected.device)[None, :] < counts[:, None]
        return projected[valid], frames, lengths

    def input_embeddings(self, input_ids: torch.Tensor, kinds: torch.Tensor,
                         speech_embeddings: torch.Tensor | None) -> torch.Tensor:
        embeddings = self.llm.get_input_embeddings()(input_ids)
        if speech_embeddings is not None and speech_embeddings.numel():
            speech_mask = (kinds == KIND_SPEECH)[..., None]
            if int(speech_mask.sum()) != speech_embeddings.shape[0]:
                raise ValueError(f"{int(speech_mask.sum())} speech positions but {speech_embeddings.shape[0]} "
                                 "speech embeddings: the batch was laid out for another model's frame rate")
            embeddings = embeddings.masked_scatter(speech_mask, speech_embeddings.to(embeddings.dtype))
        start = self.speech_start.to(embeddings.dtype)
        end = self.speech_end.to(embeddings.dtype)
        embeddings = torch.where((kinds == KIND_SPEECH_START)[..., None], start, embeddings)
        return torch.where((kinds == KIND_SPEECH_END)[..., None], end, embeddings)

    # -- training ------------------------------------------------------------------------------------

    def forward(self, batch: Batch, num_label_tokens: int | None = None,
                num_speech_spans: int | None = None) -> dict[str, torch.Tensor]:
        """The losses of a batch: `llm_loss` = sum of the label tokens' cross-entropies / num_label_tokens,
        `ctc_loss` = sum over speech spans of (span loss / its target length) / num_speech_spans, `loss` =
        llm_loss + ctc_weight * ctc_loss. The counts default to the batch's own (means over the batch);
        under data parallelism they are the global batch's, so the ranks' losses add up to the loss of the
        global batch (jstip.model.distributed)."""
        if num_label_tokens is None:
            num_label_tokens = batch.num_label_tokens
        if num_speech_spans is None:
            num_speech_spans = len(batch.speech)
        speech_embeddings, frames, lengths = (self.encode_speech(batch.speech) if batch.speech
                                              else (None, None, None))
        embeddings = self.input_embeddings(batch.input_ids, batch.kinds, speech_embeddings)
        # transformers' causal-LM loss: sum / num_items_in_batch (its own convention for gradient accumulation
        # and data parallelism), which equals the mean when the count is the batch's own
        out = self.llm(inputs_embeds=embeddings, attention_mask=batch.attention_mask, labels=batch.labels,
                       num_items_in_batch=num_label_tokens)
        losses = {"llm_loss": out.loss}
        loss = out.loss
        if self.ctc_head is not None and frames is not None:
            ctc = self.ctc_loss(frames, lengths, batch.speech_targets, num_speech_spans)
            losses["ctc_loss"] = ctc
            loss = loss + self.config.ctc_weight * ctc
        elif frames is None and num_speech_spans > 0:
            # This rank's share has no speech but the global batch has: run the speech path on a silent
            # placeholder with weight 0, so every rank runs (and, under FSDP, gathers) the same modules.
            loss = loss + 0.0 * self._placeholder_speech_loss()
        losses["loss"] = loss
        return losses

    def _placeholder_speech_loss(self) -> torch.Tensor:
        wave = torch.zeros(1280, device=self.speech_start.device)
        embeddings, frames, _ = self.encode_speech([wave])
        total = embeddings.float().sum()
        if self.ctc_head is not None:
            total = total + self.ctc_head(frames).float().sum()
        return total

    def ctc_targets(self, text: str) -> list[int]:
        """The CTC target of a speech span's words."""
        return self.token_units.targets(text, self.tokenizer)

    def ctc_log_probs(self, frames: torch.Tensor) -> torch.Tensor:
        return self.ctc_head(frames).float().log_softmax(-1)

    def ctc_loss(self, frames: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]],
                 num_spans: int | None = None) -> torch.Tensor:
        """Sum over spans of (span loss / target length) / num_spans (default: the number of spans, i.e.
        torch's `mean` reduction)."""
        log_probs = self.ctc_log_probs(frames).transpose(0, 1)  # (T, spans, vocab + 1)
        flat = torch.tensor([t for target in targets for t in target], dtype=torch.long, device=frames.device)
        target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long, device=frames.device)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.token_units.blank):
            # out-of-range targets make ctc_loss read past its inputs (NaN losses, aborts): refuse them
            raise ValueError(f"CTC targets outside the head's {self.token_units.size} {self.token_units.kind} units: "
                             "the batch was laid out without this model's ctc_targets (lay_out(..., "
                             "ctc_targets=model.ctc_targets))")
        # zero_infinity: a short span can have fewer frames than units; its loss is dropped, not inf
        per_span = nn.functional.ctc_loss(log_probs, flat, lengths, target_lengths, blank=self.token_units.blank,
                                          reduction="none", zero_infinity=True)
        return (per_span / target_lengths.clamp(min=1)).sum() / (len(targets) if num_spans is None else num_spans)

    def batch_layout(self):
        """What a DataLoader worker needs to lay out and collate batches for this model (no weights)."""
        from jstip.model.batching import BatchLayout

        return BatchLayout(self.tokenizer, type(self.encoder).num_frames, self.config.projector.stack,
                           self.token_units)


# -- building, saving, loading ------------------------------------------------------------------------

MODEL_FILE = "speech_llm.json"
WEIGHTS_FILE = "weights.pt"
LLM_DIR = "llm"


def load_llm(path: str | Path, lora=None):
    """An AutoModelForCausalLM and its tokenizer from a hub id or directory; LoRA adapters when configured."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:  # e.g. Llama 3: pad with EOS (padded positions never carry loss)
        tokenizer.pad_token = tokenizer.eos_token
    llm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        llm = get_peft_model(llm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    return llm, tokenizer


def build_speech_llm(config: SpeechLLMConfig, llm_path: str | Path, seed: int = 0) -> SpeechLLM:
    llm, tokenizer = load_llm(llm_path, config.llm.lora)
    torch.manual_seed(seed)  # the encoder, projector and markers start from the same weights for a seed
    return SpeechLLM(config, llm, tokenizer)


def trainable_state(model: SpeechLLM) -> dict[str, torch.Tensor]:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: t.detach().cpu() for name, t in model.state_dict().items() if name in trainable}


def save_speech_llm(model: SpeechLLM, out_dir: str | Path, llm_source: str, extra: dict | None = None,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the model directory. `llm_source`: where the base LLM comes from when loading: LLM_DIR (saved
    here) or the hub id / path it was loaded from. `weights`: the trainable tensors, when the model's own
    are sharded (FSDP: gathered by the caller); default trainable_state(model)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(trainable_state(model) if weights is None else weights, out_dir / WEIGHTS_FILE)
    meta = {"config": model.config.model_dump(mode="json"), "llm_source": llm_source, **(extra or {})}
    (out_dir / MODEL_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out_dir


def load_speech_llm(model_dir: str | Path, map_location: str | torch.device = "cpu") -> SpeechLLM:
    """Rebuild a saved model: the base LLM, then every saved trainable tensor over it."""
    model_dir = Path(model_dir)
    meta_path = model_dir / MODEL_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved jstip speech-LLM (no {MODEL_FILE})")
    meta = json.loads(meta_path.read_text())
    config = SpeechLLMConfig.model_validate(meta["config"])
    source = meta["llm_source"]
    llm_path = model_dir / LLM_DIR if source == LLM_DIR else source
    model = build_speech_llm(config, llm_path)
    state = torch.load(model_dir / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    missing_trainable = set(trainable_state(model)) - set(state)
    if missing_trainable:
        raise ValueError(f"{model_dir / WEIGHTS_FILE} lacks {len(missing_trainable)} trainable tensors "
                         f"(e.g. {sorted(missing_trainable)[:3]}): saved with a different config?")
    model.load_state_dict(state, strict=False)
    return model
