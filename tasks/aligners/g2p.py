"""Offline grapheme-to-phoneme for words the aligner's dictionary lacks (drug names, surnames, brands).

espeak-ng's letter-to-sound rules give IPA (`tasks.espeak.phonemize`); this module maps that IPA onto the
39 ARPAbet phones of CMUdict, the phone set of pocketsphinx's en-us acoustic model. The mapping reads
the IPA left to right, longest symbol first; every symbol either maps to phones or is dropped on purpose
(stress, length, tie and boundary marks). A symbol this table does not know is dropped and logged once,
so a new espeak voice or a foreign word shows up in the log instead of failing the alignment.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata

from jstip.tasks.aligners.espeak import phonemize

log = logging.getLogger(__name__)

# The phone set of pocketsphinx's en-us model (every phone its cmudict-en-us.dict uses).
ARPABET = frozenset(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split()
)
VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})

_SYLLABIC = "\u0329"  # combining vertical line below: n̩ l̩ m̩ (button, bottle)
_FLAP = "\u027e"  # ɾ

# IPA (as espeak-ng writes it; length marks are skipped while reading) -> ARPAbet. Multi-character keys
# are matched before their prefixes. r-coloured vowels keep a separate R (CMUdict writes "car" K AA R, "more" M AO R),
# except ɜ/ɚ/ɝ which are ER on their own ("bird" B ER D) and swallow a following ɹ.
_IPA_TO_ARPABET: dict[str, tuple[str, ...]] = {
    # diphthongs
    "eɪ": ("EY",), "aɪ": ("AY",), "ɑɪ": ("AY",), "aʊ": ("AW",), "oʊ": ("OW",), "əʊ": ("OW",), "ɔɪ": ("OY",),
    # affricates
    "tʃ": ("CH",), "dʒ": ("JH",),
    # monophthongs
    "i": ("IY",), "ɪ": ("IH",), "ᵻ": ("IH",), "ɨ": ("IH",), "y": ("UW",), "ʏ": ("UH",),
    "e": ("EH",), "ɛ": ("EH",), "æ": ("AE",), "a": ("AE",), "ɶ": ("AE",),
    "ɑ": ("AA",), "ɒ": ("AA",), "ɔ": ("AO",), "o": ("OW",), "ɵ": ("OW",),
    "ʊ": ("UH",), "u": ("UW",), "ɯ": ("UW",),
    "ʌ": ("AH",), "ə": ("AH",), "ɐ": ("AH",), "ɤ": ("AH",), "ø": ("ER",), "œ": ("ER",),
    "ɜ": ("ER",), "ɚ": ("ER",), "ɝ": ("ER",),
    # consonants
    "p": ("P",), "b": ("B",), "t": ("T",), "d": ("D",), "k": ("K",), "g": ("G",), "ɡ": ("G",), "q": ("K",),
    "f": ("F",), "v": ("V",), "θ": ("TH",), "ð": ("DH",), "s": ("S",), "z": ("Z",), "ʃ": ("SH",), "ʒ": ("ZH",),
    "h": ("HH",), "ɦ": ("HH",), "x": ("K",), "χ": ("K",), "ç": ("HH",), "ɣ": ("G",), "β": ("V",), "ɸ": ("F",),
    "m": ("M",), "n": ("N",), "ŋ": ("NG",), "ɲ": ("N", "Y"), "ɱ": ("M",),
    "l": ("L",), "ɫ": ("L",), "ɬ": ("L",), "ʎ": ("L", "Y"), "ɹ": ("R",), "r": ("R",), "ɻ": ("R",), "ʁ": ("R",),
    "w": ("W",), "ʍ": ("W",), "j": ("Y",), "ɥ": ("Y",),
    # a glottal stop stands for a /t/ in US speech ("button" bˈʌʔn̩, CMUdict B AH T AH N); word-initial
    # ones (vowel onsets) are dropped below
    "ʔ": ("T",),
}

# Marks that carry no phone: stress, length, syllable/linking marks, tone bars, nasalisation and other
# diacritics, and the separators espeak-ng puts between words.
_DROP = set("ˈˌːˑ.‿|‖-_ ʰʲʷˠˤ̥̬̪̺̻̹̜̟̠̝̞̘̙̃̈̆̚'") | {"\u0361", "\u035c"}

_LANG_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)?\)")  # espeak-ng's "(fr)...(en)" language tags
_MAX_KEY = max(len(k) for k in _IPA_TO_ARPABET)
_warned: set[str] = set()


def ipa_to_arpabet(ipa: str, word: str = "") -> list[str]:
    """Map espeak-ng IPA to ARPAbet phones. `word` (the spelling) only decides how a flap ɾ is written."""
    ipa = unicodedata.normalize("NFD", _LANG_SWITCH.sub("", ipa))
    # US flapping merges /t/ and /d/ ("butter", "ladder"); CMUdict writes the phoneme the spelling has
    flap = ("D",) if "d" in word.lower() and "t" not in word.lower() else ("T",)
    phones: list[str] = []
    i = 0
    while i < len(ipa):
        ch = ipa[i]
        if ch == _SYLLABIC:
            # syllabic consonant: CMUdict writes a schwa before it ("button" B AH T AH N)
            if phones and phones[-1] not in VOWELS:
                phones.insert(len(phones) - 1, "AH")
            i += 1
            continue
        if ch in _DROP:
            i += 1
            continue
        if ch == _FLAP:
            phones.extend(flap)
            i += 1
            continue
        for size in range(min(_MAX_KEY, len(ipa) - i), 0, -1):
            mapped = _IPA_TO_ARPABET.get(ipa[i:i + size])
            if mapped is not None:
                break
        else:
            if ch not in _warned:
                _warned.add(ch)
                log.warning("g2p: IPA symbol %r (U+%04X) in %r for %r has no ARPAbet mapping; dropped",
                            ch, ord(ch), ipa, word)
            i += 1
            continue
        if mapped == ("T",) and ipa[i] == "ʔ" and not phones:
            i += size
            continue
        if mapped == ("R",) and phones and phones[-1] in ("ER", "R"):
            i += size  # ɜːɹ / ɚɹ: the r-colour is already in ER; espeak doubles ɹ across letters ("MRI")
            continue
        phones.extend(mapped)
        i += size
    return phones


def arpabet(word: str, voice: str = "en-us") -> list[str]:
    """ARPAbet pronunciation of `word` as espeak-ng would say it, e.g. "metformin" -> M EH T F AO R M IH N.

    Returns [] when espeak-ng gives no phonemes (a token of symbols only). Cached per (word, voice).
    """
    return list(_arpabet(word, voice))


@functools.lru_cache(maxsize=65536)
def _arpabet(word: str, voice: str) -> tuple[str, ...]:
    return tuple(ipa_to_arpabet(phonemize(word, voice), word))
