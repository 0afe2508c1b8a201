"""A small ctypes binding to libespeak-ng as shipped by the `espeakng-loader` wheel.

Two things jstip needs from espeak-ng, both offline and pip-only:
- speech with ground-truth word start times (`synthesize`), for the demo corpus and for tests;
- phonemes for words no pronunciation dictionary knows (`phonemize`), for the aligner's G2P.

libespeak-ng keeps global state (voice, parameters, callback), so every call holds one process-wide
lock. The library is initialised lazily, once per process.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 22050  # espeak-ng's native output rate; reported again by espeak_Initialize

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / event types, from speak_lib.h (espeak-ng 1.52)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_SENTENCE = 0, 1, 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character offset of the word in the input text
        ("length", ctypes.c_int),  # length of the word in characters
        ("audio_position", ctypes.c_int),  # milliseconds from the start of the synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))

_lock = threading.RLock()
_lib: ctypes.CDLL | None = None
_sample_rate = SAMPLE_RATE


class EspeakError(RuntimeError):
    pass


def _library() -> ctypes.CDLL:
    global _lib, _sample_rate
    if _lib is not None:
        return _lib
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise EspeakError(f"espeak_Initialize failed (returned {rate}); data path {espeakng_loader.get_data_path()}")
    _sample_rate = rate
    _lib = lib
    return lib


def _set_voice(lib: ctypes.CDLL, voice: str) -> None:
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise EspeakError(f"unknown espeak-ng voice {voice!r} (examples: 'en-us', 'en-us+f3', 'en+m2')")


@dataclass(frozen=True)
class WordEvent:
    """One WORD event: where a word of the input text starts in the synthesised audio."""

    char_start: int  # 0-based offset of the word in the input text
    char_length: int
    start_sample: int


@dataclass(frozen=True)
class Synthesis:
    samples: np.ndarray  # int16 mono
    sample_rate: int
    words: list[WordEvent]


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50,
               rand_seed: int | None = None) -> Synthesis:
    """Speak `text` and return int16 PCM plus one WordEvent per word espeak-ng spoke.

    rate is words per minute (espeak-ng accepts 80-450), pitch and pitch_range are 0-100. rand_seed
    reseeds espeak-ng's noise generator (otherwise seeded from the clock at initialisation); even so,
    output also depends on what the process spoke before (see jstip.tasks.synth).
    """
    chunks: list[np.ndarray] = []
    events: list[WordEvent] = []

    def on_audio(wav, num_samples, event_array):  # called from inside espeak_Synth, same thread
        if num_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while event_array[i].type != _EVENT_LIST_TERMINATED:
            ev = event_array[i]
            if ev.type == _EVENT_WORD:
                # `sample` is exact; `audio_position` is the same instant truncated to whole milliseconds
                start = ev.sample
                events.append(WordEvent(ev.text_position - 1, ev.length, start))
            i += 1
        return 0

    callback = _SynthCallback(on_audio)
    encoded = text.encode("utf-8")
    with _lock:
        lib = _library()
        _set_voice(lib, voice)
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
            lib.espeak_SetParameter(param, value, 0)
        if rand_seed is not None:
            lib.espeak_ng_SetRandSeed(rand_seed)
        lib.espeak_SetSynthCallback(callback)
        err = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise EspeakError(f"espeak_Synth failed with code {err} for text {text[:60]!r}")
        lib.espeak_Synchronize()
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    # text_position counts bytes of UTF-8 for non-ASCII text; map byte offsets back to characters
    if len(encoded) != len(text):
        byte_to_char = {len(text[:i].encode("utf-8")): i for i in range(len(text) + 1)}
        events = [WordEvent(byte_to_char.get(e.char_start, e.char_start), e.char_length, e.start_sample) for e in events]
    return Synthesis(samples.astype(np.int16, copy=False), _sample_rate, events)


def phonemize(text: str, voice: str = "en-us") -> str:
    """IPA phonemes for `text` as espeak-ng would speak it (words separated by spaces)."""
    with _lock:
        lib = _library()
        _set_voice(lib, voice)
        buf = ctypes.c_char_p(text.encode("utf-8"))
        ptr = ctypes.pointer(buf)
        parts = []
        while ptr.contents.value:
            out = lib.espeak_TextToPhonemes(ptr, _CHARS_UTF8, _PHONEMES_IPA)
            if out is None:
                break
            parts.append(out.decode("utf-8"))
        return " ".join(p.strip() for p in parts if p.strip())
