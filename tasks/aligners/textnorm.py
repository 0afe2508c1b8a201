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
from itertools import islice, product

from num2words import num2words

from jstip.tasks.text import split_words

Form = tuple[str, ...]

# Enough for every reading worth offering (a date: 3 day-month readings x 3 year readings, plus one);
# pocketsphinx grammars with many more branches per token decode no better and slower.
MAX_ALTERNATIVES = 16

# --------------------------------------------------------------------------------------------------
# Tables

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")


def _alts(spec: str) -> list[Form]:
    """ "doctor|drive" -> [("doctor",), ("drive",)]."""
    return [tuple(alt.split()) for alt in spec.split("|")]


def _spelled(letters: str) -> str:
    return " ".join(letters)


# Matched case-sensitively (the lower-case spelling is an ordinary word: "pin", "us", "or", "am").
_EXACT: dict[str, list[Form]] = {key: _alts(spec) for key, spec in {
    "No.": "no|number", "no.": "no|number", "NO.": "no|number",
    "Ms": "miz|m s", "Ms.": "miz|m s", "MS": "m s|miz",
    "am": "am|a m", "AM": "a m|am", "PM": "p m",
    "PIN": "pin|p i n", "PINs": "pins|p i n's", "IRA": "i r a|ira", "IV": "i v|four", "US": "u s|us",
    "IT": "i t|it", "OR": "o r|or", "ER": "e r|er", "ED": "e d|ed", "PT": "p t", "OT": "o t", "PE": "p e",
    "ID": "i d|id", "SEC": "s e c|sec", "BUN": "b u n|bun", "PET": "pet|p e t", "CAT": "cat|c a t",
    "AIDS": "aids|a i d s", "APR": "a p r", "CD": "c d", "CDs": "c d's", "II": "two|i i", "III": "three|i i i",
    "VI": "six|v i", "VII": "seven|v i i", "VIII": "eight|v i i i", "BID": "b i d|twice a day",
    "TID": "t i d|three times a day", "QID": "q i d|four times a day", "PRN": "p r n|as needed",
    "PO": "p o", "HR": "h r|hours", "ROTH": "roth", "Roth": "roth",
}.items()}

# Matched on the lower-cased token; a key with a final "." only matches with it ("Co." is company,
# "co-pay" is not), a key without one matches with or without it ("Dr", "Dr.").
_ANY_CASE: dict[str, list[Form]] = {key: _alts(spec) for key, spec in {
    "dr": "doctor|drive", "mr": "mister", "mrs": "missus|misses", "st": "saint|street", "jr": "junior",
    "sr": "senior", "vs": "versus|v s", "etc": "et cetera|etcetera", "e.g.": "for example|e g",
    "eg": "for example|e g", "i.e.": "that is|i e", "approx": "approximately|approx|about",
    "a.m.": "a m", "p.m.": "p m", "pm": "p m", "a.k.a.": "also known as|a k a", "aka": "also known as|a k a",
    "min": "minutes|minute|min|minimum", "mins": "minutes|minute", "hr": "hours|hour|h r",
    "hrs": "hours|hour", "sec": "seconds|second|sec", "secs": "seconds|second", "wk": "weeks|week",
    "wks": "weeks|week", "yr": "years|year", "yrs": "years|year", "dept": "department", "govt": "government",
    "inc": "incorporated|ink", "corp": "corporation|corp", "co.": "company|co", "ltd": "limited",
    "ave": "avenue", "blvd": "boulevard", "rd.": "road", "apt": "apartment", "mt.": "mount",
    "ft": "feet|foot|fort", "prof": "professor", "sgt": "sergeant", "capt": "captain", "lt.": "lieutenant",
    "gov.": "governor", "vol": "volume", "ok": "okay|o k", "o.k.": "okay|o k", "rx": "r x|prescription",
    "dx": "diagnosis|d x", "jan.": "january", "feb.": "february", "mar.": "march", "apr.": "april",
    "jun.": "june", "jul.": "july", "aug.": "august", "sep.": "september", "sept.": "september",
    "oct.": "october", "nov.": "november", "dec.": "december", "mon.": "monday", "tue.": "tuesday",
    "tues.": "tuesday", "thu.": "thursday", "thurs.": "thursday", "fri.": "friday",
    "24/7": "twenty four seven", "20/20": "twenty twenty", "9/11": "nine eleven|september eleventh",
    "w/": "with", "w/o": "without", "c/o": "care of", "n/a": "n a|not applicable", "y/o": "year old",
    "b/c": "because", "401k": "four oh one k|four o one k|four hundred one k",
    "401(k)": "four oh one k|four o one k|four hundred one k",
    "403b": "four oh three b|four o three b|four hundred three b",
    "403(b)": "four oh three b|four o three b|four hundred three b",
    "ph.d.": "p h d", "phd": "p h d", "a1c": "a one c", "hba1c": "h b a one c|a one c", "covid": "covid",
    "hipaa": "hipaa",
    "nsaid": "n said|n s a i d", "nsaids": "n saids|n s a i d s", "asap": "a s a p|asap",
    "faq": "f a q|faq", "usd": "u s d|dollars", "eur": "e u r|euros", "gbp": "g b p|pounds",
    # Acronyms said letter by letter whose lower-case spelling is no English word.
    **{acronym: _spelled(acronym) for acronym in (
        "atm apy mri ecg ekg eeg emt hiv ct bp icu copd adhd ptsd uti dvt cbc bmi ldl hdl tsh psa inr gfr "
        "egfr ssri cdc fda nih cpr ems ibs hpv std sti rsv ssn fdic irs cpa ceo cfo cto llc etf ipo gdp "
        "cpi hsa fsa hoa usa uk eu tv diy fyi vip tsa dmv gps pdf url sms usda icd ivf mmr rn md gi ent "
        "hmo ppo ssi ssdi roi eps ekgs ecgs mris ivs atms".split())},
}.items()}
# Plurals of the table's spelled acronyms read the last letter with 's ("ATMs" -> a t m's).
for _key in ("ekgs", "ecgs", "mris", "ivs", "atms"):
    _ANY_CASE[_key] = [(*_key[:-2], _key[-2] + "'s")]

# Units written after a number: (singular, plural, alternatives...), words space-separated.
_UNIT_SPECS: dict[str, tuple[str, ...]] = {
    "%": ("percent", "percent"), "+": ("plus", "plus"),
    "mg": ("milligram", "milligrams", "m g"), "mcg": ("microgram", "micrograms", "m c g"),
    "μg": ("microgram", "micrograms"), "ug": ("microgram", "micrograms", "u g"), "g": ("gram", "grams"),
    "kg": ("kilogram", "kilograms", "kilos", "k g"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"), "ml": ("milliliter", "milliliters", "m l"), "dl": ("deciliter", "deciliters"),
    "l": ("liter", "liters"), "cc": ("c c", "c c"), "km": ("kilometer", "kilometers", "k m"),
    "cm": ("centimeter", "centimeters"), "mm": ("millimeter", "millimeters"), "m": ("meter", "meters"),
    "ft": ("foot", "feet"), "mi": ("mile", "miles"), "mph": ("mile per hour", "miles per hour", "m p h"),
    "kph": ("kilometer per hour", "kilometers per hour", "k p h"), "h": ("hour", "hours"),
    "hr": ("hour", "hours"), "hrs": ("hour", "hours"), "min": ("minute", "minutes"),
    "mins": ("minute", "minutes"), "sec": ("second", "seconds"), "secs": ("second", "seconds"),
    "ms": ("millisecond", "milliseconds"), "mmhg": ("millimeter of mercury", "millimeters of mercury"),
    "bpm": ("beat per minute", "beats per minute", "b p m"),
    "iu": ("international unit", "international units", "i u", "units"),
    "meq": ("milliequivalent", "milliequivalents"), "mmol": ("millimole", "millimoles"),
    "kcal": ("kilocalorie", "kilocalories", "calories"), "cal": ("calorie", "calories"),
    "kb": ("kilobyte", "kilobytes", "k b"), "mb": ("megabyte", "megabytes", "m b"),
    "gb": ("gigabyte", "gigabytes", "g b"), "tb": ("terabyte", "terabytes", "t b"),
    "x": ("time", "times", "x"), "°": ("degree", "degrees"),
    "°f": ("degree fahrenheit", "degrees fahrenheit", "degrees"), "°c": ("degree celsius", "degrees celsius",
                                                                         "degrees centigrade", "degrees"),
    "yo": ("year old", "year old"),
}
# Looked up as written only: "5G" is no amount of grams, "5M" is five million (see _MULTIPLIERS).
_CASE_SENSITIVE_UNITS = {"g", "m", "l"}
_UNITS = {key: (tuple(spec[0].split()), tuple(spec[1].split()), [tuple(a.split()) for a in spec[2:]])
          for key, spec in _UNIT_SPECS.items()}
_UNITS["L"] = _UNITS["l"]
# Unit tokens on their own ("500 mg"): plural first, since a lone unit mostly follows a number other than 1.
_STANDALONE_UNITS = {"mg", "mcg", "μg", "ug", "kg", "lb", "lbs", "oz", "ml", "dl", "cc", "km", "cm", "mm",
                     "mph", "kph", "ms", "mmhg", "bpm", "iu", "meq", "mmol", "kcal", "kb", "mb", "gb"}
# Words after a slash that make it "per" ("mg/kg", "mL/min", "5mg/day").
_PER = {"day": ("day",), "week": ("week",), "month": ("month",), "year": ("year",), "dose": ("dose",),
        "hour": ("hour",), "minute": ("minute",)}

# Amount suffixes: "$5k", "1.2M", "$3bn". Lower-case m/b only after a currency sign (else meters).
_MULTIPLIERS = {"k": "thousand", "K": "thousand", "M": "million", "MM": "million", "mm": "million",
                "mn": "million", "mil": "million", "m": "million", "B": "billion", "b": "billion",
                "bn": "billion", "Bn": "billion", "T": "trillion", "tn": "trillion",
                "thousand": "thousand", "million": "million", "billion": "billion", "trillion": "trillion"}
_BARE_MULTIPLIERS = {"k", "K", "M", "MM", "mn", "B", "bn", "Bn", "T", "tn"}

# (singular, plural) of the main unit, then of the hundredth.
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents"), "¥": ("yen", "yen", None, None)}

_SYMBOL_WORDS = {"&": ("and",), "+": ("plus",), "@": ("at",), "=": ("equals",), "%": ("percent",),
                 "°": ("degrees",), "#": ("number",), "×": ("times",)}
_SIGNS = {"-": _alts("minus|negative"), "+": _alts("plus"), "~": _alts("about|approximately|"),
          "<": _alts("less than|under"), ">": _alts("more than|greater than|over"),
          "≤": _alts("less than or equal to|at most"), "≥": _alts("greater than or equal to|at least"),
          "#": _alts("number||hash")}

# All-caps tokens of 2-3 letters are read as letters unless they are one of these common words (which
# upper-case transcripts and shouted words are full of).
_COMMON_CAPS_WORDS = set(
    "a i am an as at be by do go he hi if in is it me my no of oh on or so to up we ok "
    "the and for are but not you all any can had her was one our out day get has him his how man new now "
    "old see two way who boy did its let put say she too use yes yet why got off own few big end far run set "
    "try ask men ago age air bad bed bit box car cut eat eye fun god gun hot job key law lay led leg lie lot "
    "low may mom dad nor odd oil pay per red sat sit son sun ten top war wet win won yeah wow hey".split())

_VOWELS = set("aeiouy")
# Consonant clusters English words start and end with; an all-caps token of 4+ letters with a vowel and
# only these at its edges is read as a word ("NASA", "HIPAA", "STOP"), else spelled ("COPD", "PTSD").
_ONSETS = set("b c d f g h j k l m n p q r s t v w x z bl br ch cl cr dr fl fr gl gr kl kn kr ph pl pr sc "
              "sh sk sl sm sn sp st sw th tr tw wh wr scr shr spl spr str thr chr sch squ".split())
_CODAS = set("b c d f g h k l m n p r s t v w x z ck ct ft ld lf lk lm lp lt mp nd ng nk ns nt pt rb rd rk "
             "rl rm rn rp rs rt sh sk sp ss st th ch tch ts ds ks ps ms ls ws gs rst nts nds nch lth ght "
             "ghts ngs nks rld rds rks rts sts cks pts fts lds lts mps nch rch rth rse wn wl wd ws lls".split())

# --------------------------------------------------------------------------------------------------
# Patterns

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_CUR = r"[$£€¥]"
_CHARS = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "`": "'",
                        "\u2013": "-", "\u2212": "-", "\u2010": "-", "\u2011": "-", "\u2044": "/",
                        "\u00b5": "μ", "™": None, "®": None, "©": None})
_VULGAR = re.compile(r"(\d)([½⅓⅔¼¾⅛⅜⅝⅞])")
_KEEP_LEADING = re.compile(r"(?:[-+~<>≤≥#]?[$£€¥]?\.?\d|[$£€¥]\d|'\d0'?s)")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
_INITIALS = re.compile(r"(?:[^\W\d_]\.){2,}")
_ORDINAL = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)(st|nd|rd|th)", re.I)
_DECADE = re.compile(r"'?(\d0|\d{3}0)'?s")
_NUMBER_WITH_UNIT = re.compile(rf"([-+~<>≤≥#]?)({_NUM})([^\d\s]*)")
_MONEY = re.compile(rf"([-+~<>≤≥]?)(?:({_CUR})({_NUM})([A-Za-z]*)|({_NUM})([A-Za-z]*)({_CUR}))")
_MONEY_RANGE = re.compile(rf"({_CUR})({_NUM})([A-Za-z]*)-{_CUR}?({_NUM})([A-Za-z]*)")
_RANGE = re.compile(rf"({_NUM})([^\d\s-]*)-({_NUM})([^\d\s-]*)")
_PHONE = re.compile(r"(?:1-)?\d{3}-\d{3}-\d{4}|\d{3}-\d{4}|\(\d{3}\)\d{3}-\d{4}")
_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
_DATE = re.compile(r"(\d{1,2})([/-])(\d{1,2})\2(\d{4}|\d{2})|(\d{1,2})\.(\d{1,2})\.(\d{4})")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?:([ap])\.?m\.?)?|(\d{1,2})([ap])\.?m\.?", re.I)
_RATIO = re.compile(r"(\d+):(\d+)")
_FRACTION = re.compile(r"(\d+)/(\d+)")
_MIXED_FRACTION = re.compile(r"(\d+) (\d+)/(\d+)")
_PLURAL_ACRONYM = re.compile(r"([A-Z]{2,})(')?s")
_POSSESSIVE = re.compile(r"(.+)'s")
_PIECE = re.compile(rf"{_NUM}|[^\W\d_]+(?:'[^\W\d_]+)*|[^\w\s]|_", re.UNICODE)

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
