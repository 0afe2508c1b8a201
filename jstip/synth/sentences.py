"""The demo corpus's scripts: entity-rich medical and banking sentences, with the voice settings to speak them.

Transcripts are in spoken form: numbers, amounts and dates are written as words ("five hundred
milligrams", "March third", "two thousand dollars"), with normal capitalisation and punctuation, so a
word-level aligner has one written word per spoken word.

Entities. Each utterance carries `entities`: the surface strings of its entity mentions, exactly as they
appear in the transcript (case included), in order of appearance. Entities are
- named entities: drugs, conditions, procedures, clinicians (medical); bank products, merchants
  (banking);
- numeric expressions: doses, money amounts, interest rates, dates and card digits.
Numeric expressions count because they are what speech recognisers get wrong most often in these
domains, and the text-only corpus exists to teach exactly those. Frequencies ("twice a day") and fixed
phrases ("ninety tablets") are not entities.

Randomness. Utterance i draws everything (domain template, fillers, voice, rate, pitch, silences) from
`numpy.random.default_rng([seed, 0, i])` and text-only sentence j from `default_rng([seed, 1, j])`. So a
corpus is a pure function of (seed, N), a corpus of N utterances is a prefix of one of N+1, and the
text-only count never changes the speech. Utterance i's domain alternates: even i medical, odd banking.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
from num2words import num2words

from jstip.tasks.text import split_words

DOMAINS = ("medical", "banking")
_ID_PREFIX = {"medical": "demo-med", "banking": "demo-bank"}

# espeak-ng voice + variant names; all present in espeakng-loader 0.2.4's data (lang/gmw, voices/!v).
VOICES = (
    "en-us", "en-us+f2", "en-us+f3", "en-us+f4", "en-us+m1", "en-us+m3", "en-us+m7",
    "en+f2", "en+m2", "en-gb-x-rp+f5",
)
RATE_WPM = (140, 190)  # inclusive
PITCH = (35, 70)
PITCH_RANGE = (30, 70)
EDGE_SILENCE_S = (0.2, 0.4)
WORDS_PER_UTTERANCE = (6, 16)  # with 140-190 wpm and the edge silences: roughly 2-7 s of audio

# --- sentence templates -------------------------------------------------------------------------------
# {slot}s are filled by _FILLERS; a slot named like another plus a digit ({drug2}) takes a different
# value of the same filler. Article-sensitive slots follow "the"/"my"/"your", never "a".
# espeak-ng speaks "for the" and "of the" as one dictionary entry with ONE word event, which leaves
# "the" without a start time: templates avoid those pairs (tests/synth/test_synth.py checks every template).

TEMPLATES: dict[str, tuple[str, ...]] = {
    "medical": (
        "Start {drug} {dose} {frequency}, beginning on {date}.",
        "The patient takes {drug} {dose} {frequency} for {condition}.",
        "Stop {drug} three days before the {procedure} on {date}.",
        "Please book the {procedure} with {doctor} on {date}.",
        "{doctor} increased the {drug} dose to {dose} {frequency}.",
        "She was diagnosed with {condition} and started on {drug}.",
        "His {condition} is well controlled on {drug} {dose} {frequency}.",
        "Refill {drug} {dose}, ninety tablets, to last three months.",
        "Switch from {drug} to {drug2} because of bad side effects.",
        "Is it safe to take {drug} together with {drug2}?",
        "The {procedure} went well, and {doctor} will call on {date}.",
        "Continue {drug} and repeat the blood tests on {date}.",
        "Please refill my {drug} prescription today.",
        "Is {drug} covered by my plan?",
        "The {procedure} is on {date}.",
    ),
    "banking": (
        "I would like to transfer {money} from my {product} on {date}.",
        "Your {product} payment of {money} is due on {date}.",
        "Please open my new {product} with a deposit of {money}.",
        "There is a charge of {money} from {merchant} on your {product}.",
        "The {product} now earns {rate} a year.",
        "I want to dispute the charge of {money} from {merchant} on {date}.",
        "My card ending in {digits} was declined at {merchant} this morning.",
        "Can you raise the limit on my {product} to {money}?",
        "Set up a monthly transfer of {money} into my {product}.",
        "The annual fee on your {product} is {money}, waived in year one.",
        "Move {money} from my {product} to my {product2} today.",
        "Your {product} statement closes on {date}, with a balance of {money}.",
        "What is the balance on my {product}?",
        "Freeze my card ending in {digits}, please.",
        "Pay {merchant} {money} tomorrow.",
    ),
}

_DRUGS = (
    "metformin", "atorvastatin", "lisinopril", "amoxicillin", "warfarin", "Ozempic", "levothyroxine",
    "amlodipine", "omeprazole", "gabapentin", "sertraline", "prednisone", "clopidogrel", "Eliquis",
    "Jardiance", "losartan", "simvastatin", "Xarelto", "Lipitor",
)
_DOSES_MG = (5, 10, 20, 25, 40, 50, 81, 100, 250, 500, 850, 1000)
_FREQUENCIES = ("once daily", "twice a day", "every morning", "at bedtime", "every eight hours", "once a week")
_CONDITIONS = (
    "type two diabetes", "hypertension", "atrial fibrillation", "hypothyroidism", "high cholesterol",
    "asthma", "chronic kidney disease", "rheumatoid arthritis", "pneumonia",
)
_PROCEDURES = (
    "colonoscopy", "angioplasty", "appendectomy", "echocardiogram", "upper endoscopy", "knee arthroscopy",
    "cataract surgery", "skin biopsy", "hip replacement", "cardiac catheterization", "mammogram",
)
_DOCTORS = (
    "Doctor Patel", "Doctor Nguyen", "Doctor Okafor", "Doctor Schmidt", "Doctor Ramirez", "Doctor Chen",
    "Doctor Kowalski", "Doctor Haddad",
)
_PRODUCTS = (
    "Platinum Rewards card", "Premier Savings account", "Everyday Checking account", "Sapphire Travel card",
    "Cash Back Plus card", "Business Advantage account", "Youth Saver account", "Home Equity line of credit",
    "Gold Travel card", "Money Market account",
)
_MERCHANTS = (
    "Amazon", "Walmart", "Costco", "Starbucks", "Target", "Home Depot", "Delta Airlines", "Uber", "Netflix",
    "Whole Foods",
)
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Named entities that no default corpus ever draws: with `novel_entities` > 0 a slot draws from these with
# that probability. A benchmark speaks a training corpus without them and writes its domain text (and
# test set) with them: entities a model can only know from text, the domain-adaptation case of JSTIP.
NOVEL_FILLERS: dict[str, tuple[str, ...]] = {
    "drug": ("rivaroxaban", "empagliflozin", "rosuvastatin", "pantoprazole", "escitalopram", "montelukast",
             "tamsulosin", "Entresto"),
    "condition": ("gout", "migraine", "osteoporosis", "psoriasis", "sleep apnea"),
    "procedure": ("bronchoscopy", "lumpectomy", "thyroid ultrasound", "carpal tunnel release"),
    "doctor": ("Doctor Lindqvist", "Doctor Abernathy", "Doctor Moreau", "Doctor Takahashi"),
    "product": ("Titanium Elite card", "Horizon Savings account", "Summit Checking account", "Voyager Miles card"),
    "merchant": ("Best Buy", "Spotify", "Chipotle", "Southwest Airlines", "Ikea"),
}


def spoken_number(n: int) -> str:
    """US spoken form of a cardinal: 2450 -> 'two thousand four hundred fifty'."""
    # num2words writes British "and" and thousands commas ("two thousand, four hundred and fifty")
    return num2words(n).replace(",", "").replace(" and ", " ")


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _dose(rng: np.random.Generator) -> str:
    return f"{spoken_number(_DOSES_MG[int(rng.integers(len(_DOSES_MG)))])} milligrams"


def _money(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.35:
        dollars = int(rng.integers(5, 200))
        if rng.random() < 0.5:
            cents = int(rng.integers(1, 100))
            return f"{spoken_number(dollars)} dollars and {spoken_number(cents)} cents"
        return f"{spoken_number(dollars)} dollars"
    if kind < 0.8:
        return f"{spoken_number(int(rng.integers(2, 60)) * 50)} dollars"
    return f"{spoken_number(int(rng.integers(1, 26)) * 1000)} dollars"


def _rate(rng: np.random.Generator) -> str:
    whole = spoken_number(int(rng.integers(1, 25)))
    decimals = " ".join(_DIGITS[int(d)] for d in rng.integers(0, 10, size=int(rng.integers(1, 3))))
    return f"{whole} point {decimals} percent"


def _date(rng: np.random.Generator) -> str:
    return f"{_choice(rng, _MONTHS)} {num2words(int(rng.integers(1, 29)), to='ordinal')}"


def _card_digits(rng: np.random.Generator) -> str:
    return " ".join(_DIGITS[int(d)] for d in rng.integers(0, 10, size=4))


# slot -> (draw, is_entity)
_FILLERS = {
    "drug": (lambda rng: _choice(rng, _DRUGS), True),
    "dose": (_dose, True),
    "frequency": (lambda rng: _choice(rng, _FREQUENCIES), False),
    "condition": (lambda rng: _choice(rng, _CONDITIONS), True),
    "procedure": (lambda rng: _choice(rng, _PROCEDURES), True),
    "doctor": (lambda rng: _choice(rng, _DOCTORS), True),
    "date": (_date, True),
    "product": (lambda rng: _choice(rng, _PRODUCTS), True),
    "merchant": (lambda rng: _choice(rng, _MERCHANTS), True),
    "money": (_money, True),
    "rate": (_rate, True),
    "digits": (_card_digits, True),
}


def fill_template(template: str, rng: np.random.Generator, novel_entities: float = 0.0) -> tuple[str, list[str]]:
    """Fill one of TEMPLATES: the transcript and its entity surface strings (in order of appearance).
    novel_entities: the probability that a slot with NOVEL_FILLERS draws one of those instead (0: never, and
    no extra random draw, so a corpus without novel entities is the one it always was)."""
    text, spans, drawn = "", [], {}
    for literal, slot, _spec, _conv in string.Formatter().parse(template):
        text += literal
        if slot is None:
            continue
        base = slot.rstrip("0123456789")
        draw, is_entity = _FILLERS[base]
        if novel_entities > 0 and base in NOVEL_FILLERS and rng.random() < novel_entities:
            draw = lambda rng, options=NOVEL_FILLERS[base]: _choice(rng, options)  # noqa: E731
        value = draw(rng)
        while value in drawn.get(base, ()):  # {drug2} differs from {drug}
            value = draw(rng)
        drawn.setdefault(base, []).append(value)
        if is_entity:
            spans.append((len(text), len(text) + len(value)))
        text += value
    # only the first letter changes case, so the recorded spans stay valid
    text = text[0].upper() + text[1:]
    return text, [text[s:e] for s, e in spans]


def compose_sentence(domain: str, rng: np.random.Generator, novel_entities: float = 0.0) -> tuple[str, list[str]]:
    """A transcript of `domain` with WORDS_PER_UTTERANCE words, and its entity surface strings."""
    if domain not in TEMPLATES:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    low, high = WORDS_PER_UTTERANCE
    for _ in range(100):
        text, entities = fill_template(_choice(rng, TEMPLATES[domain]), rng, novel_entities)
        if low <= len(split_words(text)) <= high:
            return text, entities
    raise RuntimeError(f"no {domain} template gives {low}-{high} words after 100 draws; check TEMPLATES")


@dataclass(frozen=True)
class DemoUtterance:
    id: str
    domain: str
    text: str
    entities: tuple[str, ...]
    voice: str
    rate: int  # words per minute
    pitch: int
    pitch_range: int
    lead_silence_s: float
    trail_silence_s: float
    noise_seed: int  # espeak-ng's noise generator (breath, aspiration) is reseeded with this


def demo_utterances(count: int, seed: int, novel_entities: float = 0.0) -> list[DemoUtterance]:
    """The speech corpus's scripts (text, entities, voice settings, silences), without audio."""
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, 0, i])
        domain = DOMAINS[i % 2]
        text, entities = compose_sentence(domain, rng, novel_entities)
        out.append(DemoUtterance(
            id=f"{_ID_PREFIX[domain]}-{i:04d}",
            domain=domain,
            text=text,
            entities=tuple(entities),
            voice=_choice(rng, VOICES),
            rate=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
            pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
            pitch_range=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            lead_silence_s=round(float(rng.uniform(*EDGE_SILENCE_S)), 3),
            trail_silence_s=round(float(rng.uniform(*EDGE_SILENCE_S)), 3),
            noise_seed=int(rng.integers(1, 2**31 - 1)),
        ))
    return out


def text_corpus_sentences(count: int, seed: int, exclude: set[str] | frozenset[str] = frozenset(),
                          novel_entities: float = 0.0) -> list[tuple[str, str, list[str]]]:
    """`count` distinct (domain, sentence, entities) from the same templates, none of them in `exclude`."""
    out: list[tuple[str, str, list[str]]] = []
    seen = set(exclude)
    draw = 0
    while len(out) < count:
        if draw >= 20 * count + 1000:
            raise RuntimeError(f"only {len(out)} of {count} distinct text-only sentences after {draw} draws")
        rng = np.random.default_rng([seed, 1, draw])
        domain = DOMAINS[len(out) % 2]
        draw += 1
        text, entities = compose_sentence(domain, rng, novel_entities)
        if text not in seen:
            seen.add(text)
            out.append((domain, text, entities))
    return out


