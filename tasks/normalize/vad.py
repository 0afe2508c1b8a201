"""Speech detection with silero-vad's bundled model, batched over many utterances (`speech_probabilities`,
`speech_segments`): the windows of every utterance through the encoder together, the LSTM per time chunk."""

from __future__ import annotations

import logging
import math
import threading
import warnings

import numpy as np


log = logging.getLogger(__name__)

# silero-vad windows per encoder call: 256-2048 run alike (~2000x real time per core), 128 is slower.
_VAD_ENCODER_BATCH = 512
# silero-vad windows per LSTM call and utterance (~131 s): bounds the LSTM's workspace on long audio.
_VAD_TIME_CHUNK = 4096


_vad_lock = threading.Lock()
_vad: dict[int, tuple] = {}  # sample rate -> (silero network for that rate, torch LSTM with its weights)


def _silero(sample_rate: int = 16000) -> tuple:
    """silero-vad's network for `sample_rate` (from its wheel: no download), loaded once per process."""
    with _vad_lock:
        if sample_rate not in _vad:
            import torch

            threads = torch.get_num_threads()
            with warnings.catch_warnings():  # its loader uses deprecated importlib.resources.path, torch.jit.load
                warnings.simplefilter("ignore", DeprecationWarning)
                from silero_vad import load_silero_vad

                model = load_silero_vad()
            torch.set_num_threads(threads)  # importing silero_vad.model sets 1 thread for the whole process
            network = model._model if sample_rate == 16000 else model._model_8k
            cell = network.decoder.rnn
            lstm = torch.nn.LSTM(cell.weight_ih.shape[1], cell.weight_hh.shape[1])
            with torch.no_grad():
                for mine, theirs in ((lstm.weight_ih_l0, cell.weight_ih), (lstm.weight_hh_l0, cell.weight_hh),
                                     (lstm.bias_ih_l0, cell.bias_ih), (lstm.bias_hh_l0, cell.bias_hh)):
                    mine.copy_(theirs)
            _vad[sample_rate] = (network, lstm.eval())
    return _vad[sample_rate]


def speech_probabilities(audios: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
    """silero-vad's speech probability for every 32 ms window of each mono float32 audio: the numbers its
    `get_speech_timestamps` computes (to ~1e-5), several times faster.

    silero's network is stateless up to one LSTM cell: per window, [64 samples of context + 512 new]
    -> STFT -> conv encoder -> LSTM cell (the only state) -> conv -> sigmoid. Called one window at a time,
    as silero does, it runs ~100-250x real time per core. Here the stateless encoder runs over many
    windows at once, and the LSTM over every utterance's sequence at once as a torch.nn.LSTM holding the
    cell's weights (the same gate equations): ~1000x. Time is cut into chunks of _VAD_TIME_CHUNK windows
    with the LSTM state carried across, so memory stays small for a 2-hour file and results stay exact.
    """
    import torch

    window = 512 if sample_rate == 16000 else 256
    context = window // 8  # 64 samples at 16 kHz, 32 at 8 kHz
    network, lstm = _silero(sample_rate)
    counts = [math.ceil(len(audio) / window) for audio in audios]
    probabilities = [np.empty(n, dtype=np.float32) for n in counts]
    state: dict[int, tuple] = {}  # audio index -> LSTM (h, c) after the previous time chunk
    with torch.inference_mode():
        for t in range(0, max(counts, default=0), _VAD_TIME_CHUNK):
            active = [i for i, n in enumerate(counts) if n > t]
            encoded = []
            for i in active:
                count = min(_VAD_TIME_CHUNK, counts[i] - t)
                encoded.append(torch.cat([
                    network.encoder(network.run_extractors(torch.from_numpy(_frames(
                        audios[i], t + w, min(_VAD_ENCODER_BATCH, count - w), window, context)))).squeeze(-1)
                    for w in range(0, count, _VAD_ENCODER_BATCH)]))
            hidden = None if t == 0 else tuple(torch.stack([state[i][k] for i in active]).unsqueeze(0) for k in (0, 1))
            packed, (h, c) = lstm(torch.nn.utils.rnn.pack_sequence(encoded, enforce_sorted=False), hidden)
            state = {i: (h[0, k], c[0, k]) for k, i in enumerate(active)}  # hidden states come back in `active` order
            decoded = network.decoder.decoder(packed.data.unsqueeze(-1))  # dropout (inactive), ReLU, conv, sigmoid
            flat = decoded.reshape(len(packed.data), -1).mean(dim=1).numpy()
            # a PackedSequence holds step s of its (length-sorted) sequences at offsets[s] + rank
            offsets = np.concatenate([[0], np.cumsum(packed.batch_sizes.numpy())[:-1]])
            ranks = packed.unsorted_indices.numpy()
            for k, i in enumerate(active):
                probabilities[i][t:t + len(encoded[k])] = flat[offsets[:len(encoded[k])] + ranks[k]]
    return probabilities


def _frames(audio: np.ndarray, first: int, count: int, window: int, context: int) -> np.ndarray:
    """Network inputs of windows [first, first+count): each window with the `context` samples before it,
    zeros before the audio's start and after its end (as silero pads its last window)."""
    begin = first * window - context
    tape = np.zeros(context + count * window, dtype=np.float32)
    lo, hi = max(begin, 0), min(len(audio), (first + count) * window)
    tape[lo - begin:hi - begin] = audio[lo:hi]
    return np.lib.stride_tricks.sliding_window_view(tape, context + window)[::window].copy()


def speech_segments(audios: list[np.ndarray], sample_rate: int, threshold: float = 0.5) -> list[list[dict]]:
    """silero-vad speech segments ({"start", "end"} in samples) of each mono float32 audio, from its own
    `get_speech_timestamps_from_probs` with its defaults (250 ms min speech, 100 ms min silence, 30 ms pad)."""
    probabilities = speech_probabilities(audios, sample_rate)
    # imported only now: the first import of silero_vad sets torch to 1 thread for the whole process, and
    # _silero is the one place that imports it with the thread count restored
    _silero(sample_rate)
    from silero_vad import get_speech_timestamps_from_probs

    return [get_speech_timestamps_from_probs(p.tolist(), sampling_rate=sample_rate, threshold=threshold,
                                             audio_length_samples=len(a)) for p, a in zip(probabilities, audios)]
