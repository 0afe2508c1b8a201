"""Audio encoders: 16 kHz waveforms -> log-mel frames (10 ms) -> hidden frames.

Both encoders take a batch of variable-length waveforms and return padded hidden frames with their
lengths. Frame counts are pure arithmetic on the sample count (`num_frames`), so the sequence builder can
lay out a sequence's positions before any audio is encoded.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from jstip.model.config import EncoderConfig

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
N_FFT = 400  # 25 ms


def _mel_filters(n_mels: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    # Whisper's filter bank (Slaney scale and norm), so a pretrained Whisper encoder sees what it was trained on
    bank = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                           mel_scale="slaney")
    return torch.from_numpy(np.asarray(bank, dtype=np.float32)).T  # (n_mels, freq)


class LogMel(nn.Module):
    """Whisper-style log-mel features: log10 power, floored 8 decades under the utterance's peak, scaled
    to about [-1, 1]. Computed per waveform, so a span's features never depend on its neighbours."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.register_buffer("filters", _mel_filters(n_mels), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    @staticmethod
    def num_frames(num_samples: int) -> int:
        return num_samples // HOP + 1  # centred STFT

    def forward(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> features (batch, n_mels, frames), padded with the floor value; lengths (batch,)."""
        lengths = torch.tensor([self.num_frames(w.numel()) for w in waves], dtype=torch.long)
        out = torch.full((len(waves), self.filters.shape[0], int(lengths.max())), -1.5,
                         device=self.filters.device)
        for i, wave in enumerate(waves):
            wave = wave.to(self.filters.device, torch.float32)
            if wave.numel() < N_FFT // 2 + 1:  # reflect padding needs more samples than half a window
                wave = nn.functional.pad(wave, (0, N_FFT // 2 + 1 - wave.numel()))
            spec = torch.stft(wave, N_FFT, HOP, window=self.window, return_complex=True).abs() ** 2
            mel = self.filters @ spec
            log = torch.clamp(mel, min=1e-10).log10()
            log = torch.maximum(log, log.max() - 8.0)
            frames = int(lengths[i])
            out[i, :, :frames] = ((log + 4.0) / 4.0)[:, :frames]
        return out, lengths


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    increment = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (10 ms -> 40 ms frames) and a pre-norm transformer; for CPU training."""

    frame_seconds = 0.04

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.features = LogMel(config.n_mels)
        self.conv1 = nn.Conv1d(config.n_mels, config.d_model, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, kernel_size=3, stride=2, padding=1)
        layer = nn.TransformerEncoderLayer(config.d_model, config.heads, config.ffn_dim, config.dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.transformer = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.d_model = config.d_model

    @staticmethod
    def num_frames(num_samples: int) -> int:
        frames = LogMel.num_frames(num_samples)
        return -(-(-(-frames // 2)) // 2)  # ceil(ceil(frames / 2) / 2)

    def forward(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats, _ = self.features(waves)
        x = nn.functional.gelu(self.conv1(feats))
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)  # (batch, frames, d_model)
        lengths = torch.tensor([self.num_frames(w.numel()) for w in waves], dtype=torch.long, device=x.device)
        x = x + _sinusoids(x.shape[1], self.d_model).to(x)
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        x = self.transformer(x, src_key_padding_mask=padding)
        return self.norm(x), lengths


class WhisperSpanEncoder(nn.Module):
    """A transformers WhisperEncoder over variable-length spans.

    Whisper takes exactly `window` feature frames; a span is padded to that (a longer one is encoded in
    window-sized pieces, concatenated) and only its own output frames (20 ms each) are kept."""

    frame_seconds = 0.02

    def __init__(self, config: EncoderConfig):
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if config.pretrained:
            from transformers import WhisperModel

            self.encoder = WhisperModel.from_pretrained(config.pretrained).get_encoder()
            n_mels = self.encoder.config.num_mel_bins
        else:
            window_frames = int(round(config.whisper_window_s * 100))
            whisper = WhisperConfig(num_mel_bins=config.n_mels, d_model=config.d_model,
                                    encoder_layers=config.layers, encoder_attention_heads=config.heads,
                                    encoder_ffn_dim=config.ffn_dim, max_source_positions=window_frames // 2,
                                    dropout=config.dropout)
            self.encoder = WhisperEncoder(whisper)
            n_mels = config.n_mels
        self.window = self.encoder.config.max_source_positions * 2  # feature frames the encoder takes
        self.features = LogMel(n_mels)
        self.d_model = self.encoder.config.d_model

    @staticmethod
    def num_frames(num_samples: int) -> int:
        return -(-LogMel.num_frames(num_samples) // 2)

    def forward(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lengths = self.features(waves)
        pieces, owners = [], []
        for i in range(len(waves)):
            for start in range(0, int(lengths[i]), self.window):
                piece = feats[i, :, start:start + self.window]
                pieces.append(nn.functional.pad(piece, (0, self.window - piece.shape[1]), value=-1.5))
                owners.append((i, min(self.window, int(lengths[i]) - start)))
        hidden = self.encoder(torch.stack(pieces)).last_hidden_state  # (pieces, window / 2, d_model)
        out_lengths = torch.tensor([self.num_frames(w.numel()) for w in waves], dtype=torch.long)
        out = hidden.new_zeros(len(waves), int(out_lengths.max()), hidden.shape[-1])
        filled = [0] * len(waves)
        for piece, (i, frames) in zip(hidden, owners):
            keep = -(-frames // 2)
            out[i, filled[i]:filled[i] + keep] = piece[:keep]
            filled[i] += keep
        return out, out_lengths.to(out.device)


def build_encoder(config: EncoderConfig) -> nn.Module:
    return WhisperSpanEncoder(config) if config.kind == "whisper" else ConvEncoder(config)
