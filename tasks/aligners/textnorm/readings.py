"""Readings of one kind of token each: numbers (cardinals, ordinals, years, digits, decimals, fractions), dates,
clock times, amounts with units, money, ranges, letters and abbreviations; `_combine` builds the forms of a
token from its pieces' readings."""

from __future__ import annotations

import re
from itertools import islice, product

from num2words import num2words

from jstip.tasks.aligners.textnorm.tables import (_ANY_CASE, _BARE_MULTIPLIERS, _CASE_SENSITIVE_UNITS, _CODAS,
                                                  _COMMON_CAPS_WORDS, _CURRENCIES, _DIGIT_WORDS, _EXACT, Form,
                                                  MAX_ALTERNATIVES, _MONTHS, _MULTIPLIERS, _ONSETS, _UNITS, _VOWELS)

# --------------------------------------------------------------------------------------------------
# Numbers


def _words(text: str) -> Form:
    """num2words output as words: "one thousand, nine hundred and ninety-nine" -> one thousand nine ..."""
    return tuple(w for w in re.split(r"[\s,\-]+", text.lower()) if w)


def _unique(forms) -> list[Form]:
    out: list[Form] = []
    for form in forms:
        if form not in out:
            out.append(form)
    return out


def _us_first(british: Form) -> list[Form]:
    """num2words writes the British "and" ("two hundred and fifty"); US speakers mostly leave it out."""
    return _unique([tuple(w for w in british if w != "and"), british])


def _cardinal(n: int) -> list[Form]:
    return _us_first(_words(num2words(n)))


def _ordinal(n: int) -> list[Form]:
    return _us_first(_words(num2words(n, to="ordinal")))


def _paired(n: int) -> Form:
    """Read in pairs, as years are: 1999 -> nineteen ninety nine, 3500 -> thirty five hundred."""
    return tuple(w for w in _words(num2words(n, to="year")) if w != "and")


def _digits(digits: str) -> list[Form]:
    """Digit by digit, with "zero" and with "oh" (phone numbers, codes)."""
    zero = tuple(_DIGIT_WORDS[int(d)] for d in digits if d.isdigit())
    return _unique([zero, tuple("oh" if w == "zero" else w for w in zero)])


def _integer(digits: str) -> list[Form]:
    """A whole number as written (thousands commas allowed)."""
    plain = digits.replace(",", "")
    n = int(plain)
    if "," in digits:
        hundreds = [_paired(n)] if 1100 <= n <= 9999 and n % 100 == 0 and n % 1000 else []
        return _unique([*_cardinal(n), *hundreds])  # "2,500": two thousand five hundred | twenty five hundred
    if len(plain) > 1 and plain.startswith("0"):  # "007", "0800": a code
        return _unique([*_digits(plain), *_cardinal(n)])
    if len(plain) == 4:
        if 1100 <= n <= 1999 or 2010 <= n <= 2099:  # most likely a year
            return _unique([_paired(n), *_cardinal(n)])
        return _unique([*_cardinal(n), _paired(n)])  # "3500": ... | thirty five hundred; "1099": ten ninety nine
    if len(plain) >= 5 and not plain.endswith("00"):  # zip codes, record numbers, account numbers
        return _unique([*_digits(plain), *_cardinal(n)])
    return _cardinal(n)


def _number(num: str) -> list[Form]:
    """An unsigned number: whole ("2,500") or decimal ("2.5", ".5", "0.25")."""
    whole, point, frac = num.partition(".")
    if not point:
        return _integer(whole)
    if whole == "":  # ".5": point five, as written
        heads: list[Form] = [(), ("zero",)]
    elif whole == "0":
        heads = [("zero",), (), ("oh",)]
    else:
        heads = _cardinal(int(whole.replace(",", "")))
    tails = [("point", *f) for f in _digits(frac)]
    return _combine([heads, tails])


def _is_one(num: str) -> bool:
    return num == "1"


def _year(digits: str) -> list[Form]:
    if len(digits) == 4:
        return _integer(digits)
    n = int(digits)  # a two-digit year: "3/14/24" -> twenty four | twenty twenty four
    short = [("oh", _DIGIT_WORDS[n])] if n < 10 else _cardinal(n)
    return _unique([*short, *_integer(str(2000 + n))])


def _fraction(a: int, b: int) -> list[Form]:
    """Vulgar fraction readings: 1/2 -> one half | a half; 3/4 -> three quarters | three fourths."""
    if b == 2:
        names = [("half",) if a == 1 else ("halves",)]
    elif b == 4:
        names = [("quarter",), ("fourth",)] if a == 1 else [("quarters",), ("fourths",)]
    else:
        ordinal = _ordinal(b)[0]
        names = [ordinal if a == 1 else (*ordinal[:-1], ordinal[-1] + "s")]
    numerators = _cardinal(a) + ([("a",)] if a == 1 else [])
    forms = _combine([numerators, names])
    forms.append(("and", "a", *names[0]) if a == 1 else ("and", *forms[0]))  # after a whole number: 1 1/2
    return forms + _combine([_cardinal(a), [("over",)], _cardinal(b)])[:1]


def _over(a: int, b: int) -> list[Form]:
    """ "120/80" -> one twenty over eighty (blood pressure, scores), then the cardinal reading."""
    firsts = _cardinal(a)
    if 100 <= a <= 999 and a % 100 >= 10:
        firsts = _unique([_paired(a), *firsts])
    return _combine([firsts, [("over",)], _cardinal(b)])


def _date(month: int, day: int, year: str | None, day_first: bool = False) -> list[Form] | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    m = (_MONTHS[month - 1],)
    nth, cardinal = _ordinal(day)[0], _cardinal(day)[0]
    if day_first:
        heads = [("the", *nth, "of", *m), (*m, *nth), (*nth, *m)]
    else:
        heads = [(*m, *nth), (*m, "the", *nth), (*m, *cardinal)]
    forms = _combine([heads, _year(year)[:3] if year else [()]])
    numeric = (*_cardinal(month)[0], *cardinal, *(_year(year)[0] if year else ()))
    return forms + [numeric]


def _clock(hour: int, minute: int | None, meridiem: str | None, hour_text: str) -> list[Form] | None:
    if hour > 24 or (minute is not None and minute > 59) or (meridiem and not 1 <= hour <= 12):
        return None
    h = _cardinal(hour)[0]
    if minute is None:
        bases = [h, (*h, "o'clock")]
    elif minute == 0:
        if meridiem or 1 <= hour <= 12 and not hour_text.startswith("0"):
            bases = [(*h, "o'clock"), h]
        else:  # 24-hour clock: "15:00" -> fifteen hundred (hours); "08:00" -> oh eight hundred
            head = ("oh", *h) if hour_text.startswith("0") and hour else h
            bases = [(*head, "hundred"), (*head, "hundred", "hours"), h]
    elif minute < 10:
        bases = [(*h, "oh", _DIGIT_WORDS[minute]), (*h, "zero", _DIGIT_WORDS[minute])]
    else:
        bases = [(*h, *_cardinal(minute)[0])]
    if not meridiem:
        return bases
    suffix = (meridiem.lower(), "m")
    if minute in (None, 0):
        bases = [h, (*h, "o'clock")]
    return [(*b, *suffix) for b in bases] + bases


# --------------------------------------------------------------------------------------------------
# Units, money, ranges


def _unit(suffix: str) -> tuple[Form, Form, list[Form]] | None:
    if not suffix:
        return None
    if suffix in _UNITS:
        return _UNITS[suffix]
    lower = suffix.lower()
    if lower in _UNITS and lower not in _CASE_SENSITIVE_UNITS:
        return _UNITS[lower]
    return None


def _with_suffix(num: str, suffix: str) -> list[Form] | None:
    """A number and what is written right after it: nothing, a unit ("500mg") or a multiplier ("5k")."""
    numbers = _number(num)
    if not suffix:
        return numbers
    if suffix in _BARE_MULTIPLIERS:
        return _combine([numbers, [(_MULTIPLIERS[suffix],), (suffix.lower(),)]])
    unit = _unit(suffix)
    if unit is None:
        return None
    singular, plural, alternatives = unit
    names = [singular if _is_one(num) else plural, *([plural] if _is_one(num) else [singular]), *alternatives]
    forms = _combine([numbers, _unique(names)])
    if suffix == "m":  # "5m": five meters, or five million
        forms.append((*numbers[0], "million"))
    return forms


def _money(symbol: str, num: str, suffix: str) -> list[Form] | None:
    one, many, cent, cents = _CURRENCIES[symbol]
    if suffix:
        multiplier = _MULTIPLIERS.get(suffix) or _MULTIPLIERS.get(suffix.lower())
        if multiplier is None:
            return None
        numbers = _number(num)
        return _combine([numbers, [(multiplier, many), (multiplier,), tuple(suffix.lower())]])
    whole, point, frac = num.partition(".")
    if not point or (frac.strip("0") == "" and len(frac) == 2):
        n = int(whole.replace(",", "") or 0)
        return _combine([_number(whole or "0"), [(one,) if n == 1 else (many,)]])
    if len(frac) != 2 or cent is None:  # "$1.5", "$0.125": read the number
        return _combine([_number(num), [(many,)]])
    n, c = int(whole.replace(",", "") or 0), int(frac)
    cent_words = [(*_cardinal(c)[0], cent if c == 1 else cents)]
    if n == 0:
        return cent_words + _combine([[("zero", many)], [("and",), ()], cent_words])
    major = [(*f, one if n == 1 else many) for f in _number(whole)]
    forms = _combine([major, [(), ("and",)], cent_words])
    # "two fifty", "two oh five", "two dollars fifty": how prices are said
    minor = ("oh", _DIGIT_WORDS[c]) if c < 10 else _cardinal(c)[0]
    forms += [(*_number(whole)[0], *minor), (*major[0], *minor)]
    return forms


def _range(a: str, unit_a: str, b: str, unit_b: str) -> list[Form] | None:
    if unit_a and unit_b and unit_a.lower() != unit_b.lower():
        left, right = _with_suffix(a, unit_a), _with_suffix(b, unit_b)
    elif unit_b or unit_a:  # "10-20mg", "10mg-20mg": the unit once, after the second number
        left, right = _number(a), _with_suffix(b, unit_b or unit_a)
    else:
        left, right = _number(a), _number(b)
    if left is None or right is None:
        return None
    return _combine([left[:2], [("to",), ("through",), ()], right[:2]])


# --------------------------------------------------------------------------------------------------
# Letters


def _pronounceable(word: str) -> bool:
    clusters = re.findall(r"[aeiouy]+|[^aeiouy]+", word)
    if not any(c[0] in _VOWELS for c in clusters):
        return False
    if clusters[0][0] not in _VOWELS and clusters[0] not in _ONSETS:
        return False
    if clusters[-1][0] not in _VOWELS and clusters[-1] not in _CODAS:
        return False
    return all(len(c) <= 3 for c in clusters[1:-1] if c[0] not in _VOWELS)


def _letters(run: str, in_mixed: bool = False, joined: bool = False) -> list[Form]:
    """A run of letters (with inner apostrophes): a word, or an acronym read letter by letter.

    `in_mixed`: the run is written next to digits ("mp3"); `joined`: next to other letters or digits
    with a symbol between ("AT&T"), where a short all-caps run is no common word.
    """
    lower = run.lower()
    letters = lower.replace("'", "")
    if len(letters) <= 1:
        return [(lower,)]
    spelled = tuple(letters)
    if run.isupper():
        common = lower in _COMMON_CAPS_WORDS and not (in_mixed or joined)
        if common or (len(letters) >= 4 and _pronounceable(letters)):
            return [(lower,), spelled]
        return [spelled, (lower,)]
    if in_mixed and (len(letters) <= 3 or not set(letters) & _VOWELS):  # "mp3", "abc123"
        return [spelled, (lower,)]
    return [(lower,)]


def _abbreviation(core: str) -> list[Form] | None:
    stripped = core.rstrip(".")
    for key in (core, stripped):
        if key in _EXACT:
            return _EXACT[key]
    lower = core.lower()
    if lower in _ANY_CASE:
        return _ANY_CASE[lower]
    lower_stripped = lower.rstrip(".")
    if lower_stripped in _ANY_CASE:  # keys written with a final "." only match with it
        return _ANY_CASE[lower_stripped]
    return None


def _with_apostrophe_s(forms: list[Form], possessive: bool) -> list[Form]:
    """ "CEO's" -> c e o's; plural "MRIs" -> m r i's, "PINs" -> pins (a letter takes 's, a word s)."""
    return [(*f[:-1], f[-1] + ("'s" if possessive or len(f[-1]) == 1 else "s")) for f in forms if f]


def _combine(slots: list[list[Form]], limit: int = MAX_ALTERNATIVES) -> list[Form]:
    """Forms of consecutive slots: all preferred first, then one slot changed at a time, then the rest."""
    slots = [s for s in slots if s]
    if not slots:
        return []
    out: list[Form] = []

    def add(choice) -> None:
        form = tuple(w for slot, k in zip(slots, choice) for w in slot[k])
        if form not in out:
            out.append(form)

    base = [0] * len(slots)
    add(base)
    for i, slot in enumerate(slots):
        for k in range(1, len(slot)):
            add(base[:i] + [k] + base[i + 1:])
    for choice in islice(product(*(range(len(s)) for s in slots)), limit * 8):
        if len(out) >= limit:
            break
        add(choice)
    return out[:limit]
