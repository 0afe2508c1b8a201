"""The tables and patterns textnorm reads tokens with: number and month words, abbreviations, units, currencies,
symbols, the common all-caps words, English onsets and codas, and the token shapes as regular expressions."""

from __future__ import annotations

import re



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
