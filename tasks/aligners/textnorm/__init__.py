"""Transcript tokens as spoken words, for forced aligners; the tokens themselves are never changed.

An aligner needs the words a speaker says ("two hundred fifty dollars"), while jstip's output keeps the
transcript's own tokens ("$250") with their times. This module is the bridge:

- `spoken_forms(token)`: the ways one token of `split_words` may be spoken, preferred first. Each form is a
  tuple of lowercase words made of letters and apostrophes only, so any pronouncing dictionary or
  character vocabulary takes them; forms are deduplicated, at most MAX_ALTERNATIVES, and never empty for
  a token `split_words` returns. Aligners that can follow a grammar (pocketsphinx) offer all of them.
- `normalize_for_alignment(text)`: `spoken_forms` of every token, reordered by the neighbouring tokens
  where one token alone is ambiguous (rules below). Context only reorders: entry i is always a
  permutation of `spoken_forms(split_words(text)[i])`.
- `preferred_words(text)` -> (words, token_index): the first form of every token of
  `normalize_for_alignment(text)`, flattened, and for each word the index of the token it came from.

Mapping back (what single-path aligners, WhisperX and NeMo, rely on): `token_index` is non-decreasing,
starts at 0 and steps by 0 or 1, so every token owns a contiguous, non-empty run of words and
`token_index[-1] == len(split_words(text)) - 1`. A token's span is [start of its first word, end of its
last word]; one word never belongs to two tokens. Align `words`, then group the word times by
`token_index`. Prefer `preferred_words` over `spoken_forms(token)[0]`: it applies the context rules.

Readings (US English, as a speaker reading the transcript aloud most often says it):
- words: case folded, surrounding punctuation dropped, inner apostrophes kept (don't, patient's, curly
  quotes straightened), accents folded to a-z (café -> cafe); letters of other scripts are kept as they
  are (only an aligner for that script can use them); hyphens and slashes split compounds ("follow-up" ->
  follow up, "and/or" -> and or; "mg/kg" -> milligrams per kilogram); & + @ = inside a token are read.
- numbers (num2words): cardinals without the British "and" first ("250" -> two hundred fifty, then two
  hundred and fifty); commas are thousands ("2,500"; also "twenty five hundred"); 4-digit numbers in
  1100-1999 and 2010-2099 read as years first ("1999" -> nineteen ninety nine, "2019" -> twenty
  nineteen, then two thousand nineteen); other 4-digit numbers as cardinals first; codes (a leading
  zero, or 5+ digits not ending in 00) digit by digit; decimals "two point five" (digits after the
  point one by one); sign: minus/negative, plus, about (~), less/more than (< >), number (#);
  ordinals ("21st" -> twenty first); decades ("90s" -> nineties, "1990s" -> nineteen nineties).
- attached units and suffixes: %, mg, mcg, g, kg, ml, dl, l, km, cm, mm, m, lb, oz, mph, bpm, mmHg, IU,
  mEq, h/hr, min, ms, x (times), ° °F °C, k/K (thousand), M/B (million/billion); singular after exactly 1.
- currency $ £ € ¥ (before or after the amount): "$250" -> two hundred fifty dollars; "$2.50" -> two
  dollars fifty cents (also "two fifty"); "$5k", "$1.2M" (five thousand dollars, one point two million
  dollars); ranges ("$10-20" -> ten to twenty dollars).
- ranges "10-20" -> ten to twenty (also through, and the bare pair); phone numbers digit by digit.
- fractions "1/2" -> one half, "3/4" -> three quarters; a/b with a > b and b > 4 is read "a over b"
  ("120/80" -> one twenty over eighty); m/d with d 13-31 reads as a date ("3/14" -> march fourteenth).
- dates as one token: "3/14/2024", "3-14-2024", "2024-03-14" -> march fourteenth twenty twenty four
  (month first, US style; day first only where the first number cannot be a month, "14/3/2024" -> the
  fourteenth of march ...); "March 3rd" is two tokens and needs nothing special.
- times "3:30" -> three thirty, "3:05" -> three oh five, "3:00" -> three o'clock, "15:00" -> fifteen
  hundred, "3pm"/"3:30pm" -> ... p m; "a:b" that is no clock time -> "a to b".
- abbreviations from the tables below (Dr. -> doctor | drive, St., Mr., Mrs., Ms., Jr., vs., etc., e.g.,
  i.e., approx., No. -> no | number, month abbreviations, a.m./p.m., ...); acronyms spelled as letters,
  each letter a word ("ATM" -> a t m), with the word reading as an alternative where people say it
  ("PIN" -> pin | p i n); unknown all-caps tokens: spelled first when they cannot be read as a word
  ("LDL", "COPD", most of 2-3 letters), read as a word first when they can ("NASA", "HIPAA", "THE").
- a token with nothing speakable after all this (only underscores or symbols around a \\w character) is
  spelled character by character by name ("_" -> underscore), so no token is ever left without words.

Context rules of normalize_for_alignment (reorder only):
- "No." before a number -> number; "am" after a clock time or number -> a m;
- "Dr."/"St." after a capitalised word or number and not before one -> drive/street ("Elm St.");
- a fraction after a whole number -> "and a half" ("1 1/2" -> one and a half);
- an upper-case transcript (most words with 2+ letters all capitals, LibriSpeech style): an all-caps token
  takes the reading its lower-case spelling would have ("THE" -> the), which leaves known acronyms
  ("MRI") spelled.

Not covered (read digit group by digit group or letter by letter instead): Roman numerals beyond the
table, European decimal commas ("2,5"), scientific notation, ISBN-like codes with letters, and context
beyond the neighbouring token (a bare "5m" is five meters, not five million).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from jstip.tasks.aligners.textnorm.readings import (_abbreviation, _cardinal, _clock, _combine, _date, _digits,
                                                    _fraction, _letters, _money, _number, _ordinal, _over, _paired,
                                                    _range, _unique, _unit, _with_apostrophe_s, _with_suffix)
from jstip.tasks.aligners.textnorm.tables import (_CHARS, _CLOCK, _CURRENCIES, _DATE, _DECADE, _DIGIT_WORDS, Form,
                                                  _FRACTION, _INITIALS, _ISO_DATE, _KEEP_LEADING, MAX_ALTERNATIVES,
                                                  _MIXED_FRACTION, _MONEY, _MONEY_RANGE, _NUMBER_WITH_UNIT, _ORDINAL,
                                                  _PER, _PHONE, _PIECE, _PLURAL_ACRONYM, _POSSESSIVE, _RANGE, _RATIO,
                                                  _SIGNS, _STANDALONE_UNITS, _SYMBOL_WORDS, _UNITS, _VULGAR, _WORD)
from jstip.tasks.text import split_words


# --------------------------------------------------------------------------------------------------
# One token


def _clean(token: str) -> str:
    """The token without wrapping punctuation; currency, signs, %, degrees and a final "." are kept."""
    s = _VULGAR.sub(r"\1 \2", token)
    s = unicodedata.normalize("NFKC", s.translate(_CHARS)).translate(_CHARS)
    while s and not s[0].isalnum() and not _KEEP_LEADING.match(s):
        s = s[1:]
    while s and not s[-1].isalnum() and s[-1] not in "%.°+$£€¥":
        if s[-1] == ")" and s.count("(") >= s.count(")"):  # "401(k)"
            break
        s = s[:-1]
    return s


def _forms_of(core: str) -> list[Form] | None:
    """Readings of a whole cleaned token, or None when it is no single known shape (then: _compound)."""
    found = _abbreviation(core)
    if found is not None:
        return found
    if _INITIALS.fullmatch(core):  # "U.S.", "J.R.R."
        return [tuple(c.lower() for c in core if c != ".")]
    core = core.rstrip(".")
    if not core:
        return None
    found = _abbreviation(core)
    if found is not None:
        return found
    if core.lower() in _STANDALONE_UNITS:
        singular, plural, alternatives = _UNITS[core.lower()]
        return _unique([plural, singular, *alternatives])
    for shape, read in _SHAPES:
        m = shape.fullmatch(core)
        if m and (forms := read(m)):
            return forms
    return None


def _read_plural_acronym(m: re.Match) -> list[Form] | None:
    stem = m.group(1)
    return _with_apostrophe_s(_abbreviation(stem) or _letters(stem), possessive=bool(m.group(2)))


def _read_possessive(m: re.Match) -> list[Form] | None:
    stem = m.group(1)
    if stem.isalpha() and not stem.isupper() or _DECADE.fullmatch(m.group(0)):
        return None  # "patient's" is one word; "1990's" a decade
    forms = _forms_of(stem)
    return _with_apostrophe_s(forms, possessive=True) if forms else None


def _read_money(m: re.Match) -> list[Form] | None:
    sign = m.group(1)
    if m.group(2):
        symbol, num, suffix = m.group(2), m.group(3), m.group(4)
    else:
        symbol, num, suffix = m.group(7), m.group(5), m.group(6)
    forms = _money(symbol, num, suffix)
    return _combine([_SIGNS[sign], forms]) if forms and sign else forms


def _read_money_range(m: re.Match) -> list[Form] | None:
    symbol, a, suffix_a, b, suffix_b = m.groups()
    left, right = _money(symbol, a, suffix_a or suffix_b), _money(symbol, b, suffix_b)
    if not (left and right):
        return None
    many = _CURRENCIES[symbol][1]  # "$10-20": ten to twenty dollars, then ten dollars to twenty dollars
    short = [f[:-1] if f[-1] == many else f for f in left[:1]]
    return _combine([short, [("to",), ("through",)], right[:1]]) + _combine([left[:1], [("to",)], right[:1]])


def _read_date(m: re.Match) -> list[Form] | None:
    a, b, year = (m.group(1), m.group(3), m.group(4)) if m.group(1) else (m.group(5), m.group(6), m.group(7))
    a, b = int(a), int(b)
    return _date(a, b, year) if a <= 12 else _date(b, a, year, day_first=True)


def _read_clock(m: re.Match) -> list[Form] | None:
    if m.group(1):
        return _clock(int(m.group(1)), int(m.group(2)), m.group(3), m.group(1))
    return _clock(int(m.group(4)), None, m.group(5), m.group(4))


def _read_mixed_fraction(m: re.Match) -> list[Form]:  # "1½" -> one and a half
    fraction = _fraction(int(m.group(2)), int(m.group(3)))
    return _combine([_number(m.group(1)), [f for f in fraction if f[0] == "and"][:1]])


def _read_fraction(m: re.Match) -> list[Form] | None:
    a, b = int(m.group(1)), int(m.group(2))
    if a <= 12 and 13 <= b <= 31 and b != 16:  # "3/14": a date; "1/16" stays a fraction
        return (_date(a, b, None) or []) + _fraction(a, b)
    if b == 0:
        return _over(a, b)
    if a < b or (b <= 4 and a < 10):
        return _fraction(a, b) + _over(a, b)
    return _over(a, b) + _fraction(a, b)


def _read_decade(m: re.Match) -> list[Form]:  # "90s" -> nineties, "1990s" -> nineteen nineties
    n = int(m.group(1))
    base = _cardinal(n)[0] if n < 100 else _paired(n)
    last = base[-1][:-1] + "ies" if base[-1].endswith("y") else base[-1] + "s"
    return [(*base[:-1], last)]


def _read_number(m: re.Match) -> list[Form] | None:
    sign, num, suffix = m.groups()
    forms = _with_suffix(num, suffix)
    return _combine([_SIGNS[sign], forms]) if forms and sign else forms


# Whole-token shapes, tried in order; a reader returning None lets the next shape try.
_SHAPES = [
    (_PLURAL_ACRONYM, _read_plural_acronym),
    (_POSSESSIVE, _read_possessive),
    (_WORD, lambda m: _letters(m.group(0))),
    (_MONEY, _read_money),
    (_MONEY_RANGE, _read_money_range),
    (_ISO_DATE, lambda m: _date(int(m.group(2)), int(m.group(3)), m.group(1))),
    (_DATE, _read_date),
    (_PHONE, lambda m: _combine([_digits(g) for g in re.findall(r"\d+", m.group(0))])),
    (_CLOCK, _read_clock),
    (_RATIO, lambda m: _combine([_number(m.group(1)), [("to",)], _number(m.group(2))])),  # "2:1"
    (_MIXED_FRACTION, _read_mixed_fraction),
    (_FRACTION, _read_fraction),
    (_ORDINAL, lambda m: _ordinal(int(m.group(1).replace(",", "")))),
    (_DECADE, _read_decade),
    (_NUMBER_WITH_UNIT, _read_number),
    (_RANGE, lambda m: _range(*m.groups())),
]


def _pieces(part: str) -> list[list[Form]]:
    """Readings of each piece of a part no whole-token rule knows: letter runs, numbers, symbols."""
    pieces = _PIECE.findall(part)
    mixed = any(p[0].isdigit() for p in pieces) and any(p[0].isalpha() for p in pieces)
    joined = sum(p[0].isalnum() for p in pieces) > 1
    slots: list[list[Form]] = []
    for i, piece in enumerate(pieces):
        if piece[0].isdigit() or (piece[0] == "." and len(piece) > 1):
            slots.append(_number(piece))
        elif piece[0].isalpha():
            slots.append(_abbreviation(piece) or _letters(piece, in_mixed=mixed, joined=joined))
        elif piece == "." and 0 < i < len(pieces) - 1 and pieces[i - 1][0].isalnum() and pieces[i + 1][0].isalnum():
            slots.append([("dot",)])  # "example.com"
        elif piece in _SYMBOL_WORDS:
            slots.append([_SYMBOL_WORDS[piece]])
    return slots


def _compound(core: str) -> list[Form]:
    """Hyphen-, slash- and dash-joined parts ("follow-up", "and/or", "10mg/kg"), read part by part."""
    parts = [p for p in re.split(r"(/|[-—]+|\s+)", core) if p]
    slots: list[list[Form]] = []
    after_amount = False  # the part before a slash holds a number or is a unit: "/" is "per"
    for k, part in enumerate(parts):
        if part.strip() == "" or part[0] in "-—":
            continue
        if part == "/":
            nxt = parts[k + 1].rstrip(".").lower() if k + 1 < len(parts) else ""
            if after_amount and (nxt in _PER or (_unit(nxt) and nxt not in ("x", "%", "+"))):
                slots.append([("per",), ("a",)])
            elif slots:
                neighbours = {parts[k - 1].lower(), parts[k + 1].lower() if k + 1 < len(parts) else ""}
                said_or = [] if neighbours & {"and", "or"} else [("or",)]  # "and/or" is never "and or or"
                slots.append([(), *said_or, ("slash",)])
            continue
        if slots and slots[-1][0] in (("per",),):
            unit = _unit(part.rstrip(".")) or _unit(part.rstrip(".").lower())
            if unit:
                slots.append([unit[0], *unit[2]])
                continue
        forms = _forms_of(part)
        if forms:
            slots.append(forms)
        else:
            slots.extend(_pieces(part))
        after_amount = any(c.isdigit() for c in part) or _unit(part.rstrip(".")) is not None
    return _combine(slots)


_FOLD = str.maketrans({"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th",
                       "ı": "i"})


def _clean_word(word: str) -> str:
    """Lowercase letters and inner apostrophes only; Latin letters folded to a-z."""
    w = unicodedata.normalize("NFKD", word.lower().translate(_FOLD))
    w = "".join(c for c in w if (c.isalpha() and not unicodedata.combining(c)) or c == "'")
    return re.sub(r"'+", "'", w).strip("'")


def _finish(forms: list[Form] | None) -> list[Form]:
    out: list[Form] = []
    for form in forms or ():
        words = tuple(w for w in (_clean_word(w) for w in form) if w)
        if words and words not in out:
            out.append(words)
    return out[:MAX_ALTERNATIVES]


_CHARACTER_NAMES = {"_": "underscore", **{k: v[0] for k, v in _SYMBOL_WORDS.items()}}


def _spell_characters(token: str) -> list[Form]:
    """Last resort: every character by name ("_" -> underscore; digits and letters as themselves)."""
    words: list[str] = []
    for c in unicodedata.normalize("NFKC", token):
        if c.isdigit() and c.isascii():
            words.append(_DIGIT_WORDS[int(c)])
        elif c.isalnum():
            words.append(_clean_word(c) or c)
        elif c in _CHARACTER_NAMES or unicodedata.category(c) == "Pc":
            words.append(_CHARACTER_NAMES.get(c, "underscore"))
    return [tuple(words)] if words else []


@lru_cache(maxsize=1 << 16)
def _spoken_forms(token: str) -> tuple[Form, ...]:
    core = _clean(token)
    forms = _finish(_forms_of(core)) if core else []
    if not forms and core:
        forms = _finish(_compound(core))
    return tuple(forms or _spell_characters(token))


def spoken_forms(token: str) -> list[tuple[str, ...]]:
    """The word sequences a transcript token may be spoken as, preferred first (see the module docstring).

    Empty only for a token with no letter, digit or underscore at all, which split_words never returns.
    """
    return list(_spoken_forms(token))


# --------------------------------------------------------------------------------------------------
# A transcript


def _prefer(forms: list[Form], form: Form | None) -> None:
    if form is not None and form in forms:
        forms.remove(form)
        forms.insert(0, form)


def _upper_case_transcript(cores: list[str]) -> bool:
    """LibriSpeech-style transcripts: most tokens of 2+ letters are all capitals."""
    lettered = [c for c in cores if sum(ch.isalpha() for ch in c) >= 2]
    caps = [c for c in lettered if c.isupper()]
    return len(caps) >= 3 and len(caps) >= 0.6 * len(lettered)


def normalize_for_alignment(text: str) -> list[list[tuple[str, ...]]]:
    """spoken_forms of every word of split_words(text), reordered by the neighbouring words (reorder only)."""
    tokens = split_words(text)
    forms = [spoken_forms(t) for t in tokens]
    cores = [_clean(t) for t in tokens]
    if _upper_case_transcript(cores):
        for i, (token, core) in enumerate(zip(tokens, cores)):
            if core.isupper() and sum(ch.isalpha() for ch in core) >= 2:
                _prefer(forms[i], spoken_forms(token.lower())[0])
    for i, core in enumerate(cores):
        before = cores[i - 1] if i else ""
        after = cores[i + 1] if i + 1 < len(cores) else ""
        key = core.lower()
        if key == "no." and re.match(r"#?\d", after):
            _prefer(forms[i], ("number",))
        elif key.rstrip(".") == "am" and re.fullmatch(r"\d{1,2}(?::\d{2})?", before):
            _prefer(forms[i], ("a", "m"))
        elif key.rstrip(".") in ("dr", "st") and (before[:1].isupper() or before[:1].isdigit()) \
                and not after[:1].isupper():
            _prefer(forms[i], ("drive",) if key.startswith("d") else ("street",))
        elif _FRACTION.fullmatch(core) and re.fullmatch(r"\d+", before):
            _prefer(forms[i], next((f for f in forms[i] if f[0] == "and"), None))
    return forms


def preferred_words(text: str) -> tuple[list[str], list[int]]:
    """The preferred spoken words of the transcript and, for each, the index of its split_words token."""
    words: list[str] = []
    token_index: list[int] = []
    for i, alternatives in enumerate(normalize_for_alignment(text)):
        words.extend(alternatives[0])
        token_index.extend([i] * len(alternatives[0]))
    return words, token_index
