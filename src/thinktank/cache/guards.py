"""When two questions whose embeddings are close may still not share an answer.

A sentence embedding is close for questions that differ in exactly what decides the answer: "what is 1+1"
and "what is 21+1", "convert dollars to euros" and "euros to dollars", "is it safe" and "is it not safe",
"capital of France" and "capital of Spain" (measured: such pairs reach a cosine of 0.99 with
all-MiniLM-L6-v2, above most real paraphrases). So a semantic match needs the two questions to agree, word
for word, on everything that carries meaning, and lets them differ only in how it is said:

- **the same content words**: every word that is not a function word or a filler of the request ("tell me",
  "please", "explain", "how do I") is in both, up to case, plural and a few spelling and synonym variants
  (``movie``/``film``). A swapped noun, verb, adjective, entity, unit, month or comparative is a miss, and so
  is a word added or dropped ("how long do cats live" / "... live indoors");
- **the same numbers in the same order**, read as values ("two" = "2", "second" = "2nd", "1,000" =
  "1000"), and the same arithmetic operators ("plus" = "+");
- **the same number of negations** ("not", "no", "never", "without", "-n't", "cannot", ...);
- **the same anchors in the same order**: entities (capitalised words, acronyms, words with digits), units
  and numbers ("did Google buy YouTube" / "did YouTube buy Google");
- **the same roles**: a word after ``from``, ``to`` (after a noun), ``into``, ``than`` or ``vs`` in one
  question is not elsewhere in the other ("convert a string to an integer" / "an integer to a string");
- **no opposite particles or quantifiers**: ``on``/``off``, ``in``/``out``, ``up``/``down``, ``before``/
  ``after``, ``with``/``without``, ``all``/``some``/``any``/``none``, ``always``/``sometimes``/``never``, ...
- **the same order of content words**, up to one run of them moved ("which ocean is the largest" / "what
  is the largest ocean"), so that two words swapped around a third ("do dogs chase cats") are a miss;
- **no conjunction swapped** for another connective ("a for loop" / "a while loop"), and the same particle
  where a clause ends with one ("how do I sign up" / "... sign in");
- **the same kind of question** (who, where, when, why, how many/much), and, when both say, **the same
  persons in the same order** (I, you, he, she, we, they), **the same tense** ("who is" / "who was") and
  **the same modality** ("should I" / "can I").

Each rule refuses a pair for a reason that holds in any language use, not for words of a list of examples:
the lists here are closed word classes of English (function words, negations, quantifiers, particles,
pronouns, number words, units), not topics. The cost is paraphrases that change content words ("how do I
fix" / "how can I repair" is matched only through the small synonym table), which then miss the cache:
a miss costs one upstream call, a wrong hit a wrong answer. English only: other languages have no function
words here, so every word counts as content and only near-identical wording matches.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Features", "features", "refusal"]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_TOKEN = re.compile(
    r"\d+(?:[.,:/]\d+)*(?:st|nd|rd|th)?%?"  # numbers: 1,000  3.5  7:30  1/2  21st  15%
    r"|[^\W\d_]+(?:['’][^\W\d_]+)?"  # words, with an apostrophe inside
    r"|[+\-*/×÷^=<>√%$€£¥]"  # operators and currency signs
)

_CONTRACTIONS = {
    "can't": ["can", "not"], "cannot": ["can", "not"], "won't": ["will", "not"], "shan't": ["shall", "not"],
    "ain't": ["is", "not"], "let's": ["let", "us"],
}
_SUFFIXES = {"n't": ["not"], "'re": ["are"], "'m": ["am"], "'ll": ["will"], "'ve": ["have"], "'d": ["would"]}

NEGATIONS = frozenset({"not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without",
                       "cannot", "nope", "non"})
"""Words that turn what they apply to around."""

QUANTIFIERS = frozenset({"all", "every", "each", "some", "any", "none", "no", "few", "fewer", "many", "much", "more",
                         "most", "less", "least", "several", "both", "either", "neither", "only", "always", "never",
                         "sometimes", "often", "usually", "rarely", "seldom", "ever", "mostly", "enough", "too",
                         "very", "even", "still", "already", "yet", "again", "once"})
"""How much or how often: "do all birds fly" is not "do some birds fly". Compared as sets."""

_OPPOSITES = [("on", "off"), ("in", "out"), ("up", "down"), ("over", "under"), ("above", "below"),
              ("before", "after"), ("with", "without"), ("for", "against"), ("inside", "outside"),
              ("into", "out"), ("forward", "backward"), ("forwards", "backwards"), ("yes", "no"), ("and", "or"),
              ("first", "last")]
OPPOSITE = {a: b for a, b in _OPPOSITES} | {b: a for a, b in _OPPOSITES}
"""Function words whose opposite in the other question is a different question ("turn on" / "turn off")."""

ROLES = frozenset({"from", "to", "into", "than", "vs", "versus", "onto", "towards", "toward"})
"""Words that give the next content word its role: "dollars to euros" is not "euros to dollars"."""

_INFINITIVE = frozenset({"how", "want", "wants", "wanted", "need", "needs", "needed", "way", "ways", "have", "has",
                         "had", "going", "able", "try", "trying", "tips", "steps", "like", "wish", "hope", "learn",
                         "ought", "used", "order", "what", "where", "when", "whether", "who", "best", "easiest",
                         "fastest", "time", "allowed", "supposed", "safe", "possible", "good", "better", "hard",
                         "easy", "it", "is", "are", "i", "you", "we", "they", "me", "him", "her", "them", "us",
                         "should", "would", "could", "help", "plan", "planning", "decide", "tried", "do", "does",
                         "did"})
"""Words after which ``to`` starts an infinitive ("how to install"), not a role."""

_TENSE = {"is": "present", "am": "present", "are": "present", "do": "present", "does": "present",
          "has": "present", "have": "present", "was": "past", "were": "past", "did": "past", "had": "past",
          "will": "future", "shall": "future"}
"""Tense of the auxiliaries: "who is the CEO" is not "who was the CEO"."""

_MODAL = {"can": "possible", "could": "possible", "may": "possible", "might": "possible", "should": "ought",
          "ought": "ought", "must": "ought", "would": "would"}
"""Modality: "should I" asks for advice, "can I" for a possibility."""

CONJUNCTIONS = frozenset({"and", "or", "but", "nor", "while", "because", "if", "unless", "until", "since",
                          "although", "though", "whether", "so", "whereas", "once"})
CONNECTIVES = CONJUNCTIONS | _words("""of at by for with about as to from into onto in on off out up down over under
above below than through during between among across along around behind beside near within without per""")
"""Prepositions and conjunctions: a conjunction swapped for another connective changes the question ("a for
loop" / "a while loop"); prepositions alone may vary ("formula of water" / "formula for water")."""

_FINAL_PARTICLE = re.compile(
    r"\b(up|down|in|out|on|off|over|under|back|away|through|around|by|for|to|with|about|of|from|at|into|apart|"
    r"together|forward|along|across)\s*(?=[.?!,;:]|$)", re.IGNORECASE)
"""A particle that ends a clause belongs to its verb: "sign up" is not "sign in"."""

_WHEN_WORDS = frozenset({"year", "date", "time", "day", "month", "century", "decade", "hour"})
"""'What year' asks when."""

_WH = {"who": "person", "whom": "person", "whose": "person", "where": "place", "when": "time", "why": "reason"}
"""Kinds of question a paraphrase keeps; what/which/how ask anything."""

_PERSON = {"i": "1", "me": "1", "my": "1", "mine": "1", "myself": "1", "we": "1p", "us": "1p", "our": "1p",
           "ours": "1p", "ourselves": "1p", "you": "2", "your": "2", "yours": "2", "yourself": "2",
           "yourselves": "2", "he": "3m", "him": "3m", "his": "3m", "himself": "3m", "she": "3f", "her": "3f",
           "hers": "3f", "herself": "3f", "it": "3n", "its": "3n", "itself": "3n", "they": "3p", "them": "3p",
           "their": "3p", "theirs": "3p", "themselves": "3p"}

FUNCTION_WORDS = _words("""
a an the this that these those there here it its itself one ones
is am are was were be been being do does did doing done have has had having will would shall should can could
may might must ought let us
what which how who whom whose where when why whether if
of at by for with about as to from into onto in on off out up down over under above below than then so such
and or but nor yet because while although though unless until since away also just
any some each every all both either neither no not
i me my mine myself we our ours ourselves you your yours yourself he him his himself she her hers herself
they them their theirs themselves
""") | QUANTIFIERS | NEGATIONS
"""English function words: closed classes that carry no topic."""

FILLER = _words("""
tell explain explaining explanation know knowing wonder wondering want wanna please pls kindly help give show
describe way ways exactly actually really basically briefly simply mean means meaning meant definition define
steps step tips tip hi hello hey thanks thank anyone someone somebody possible info information details detail
make makes making list name calculate compute find determine like current currently
""")
"""Words of the request rather than of the question ("tell me", "can you explain", "what's the way to")."""

_SYNONYMS = {
    "film": "movie", "automobile": "car", "purchase": "buy", "begin": "start", "commence": "start",
    "physician": "doctor", "kid": "child", "children": "child", "people": "person", "persons": "person",
    "men": "man", "women": "woman", "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose",
    "repair": "fix", "large": "big", "inexpensive": "cheap", "aeroplane": "airplane",
    "colour": "color", "favourite": "favorite", "centre": "center", "grey": "gray", "metre": "meter",
    "litre": "liter", "kilometre": "kilometer", "centimetre": "centimeter", "millimetre": "millimeter",
    "km": "kilometer", "kms": "kilometer", "kg": "kilogram", "kgs": "kilogram", "lb": "pound", "lbs": "pound",
    "oz": "ounce", "ft": "foot", "cm": "centimeter", "mm": "millimeter", "hr": "hour", "hrs": "hour",
    "mins": "minute", "secs": "second", "gb": "gigabyte", "mb": "megabyte", "kb": "kilobyte", "tb": "terabyte",
    "usd": "dollar", "eur": "euro", "$": "dollar", "€": "euro", "£": "sterling", "¥": "yen", "mph": "mph",
    "usa": "us", "u.s.": "us", "analyse": "analyze", "organise": "organize", "realise": "realize",
}
"""Words with one meaning written two ways (spelling, abbreviations, plain synonyms). Deliberately small: a
word in here must never name something else than its partner."""

UNITS = _words("""
meter kilometer centimeter millimeter mile yard foot inch gram kilogram milligram pound ounce ton tonne stone
liter milliliter gallon quart pint cup teaspoon tablespoon celsius fahrenheit kelvin degree second minute hour
day week month year decade century millennium byte kilobyte megabyte gigabyte terabyte bit mph kph knot acre
hectare dollar euro sterling yen rupee yuan peso franc bitcoin calorie joule watt kilowatt volt amp percent
""")
"""Units of measure and currencies: anchors, like numbers (their order matters: "km to miles")."""

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "trillion": "1000000000000", "dozen": "12", "half": "0.5", "quarter": "0.25", "third": "3rd",
    "first": "1st", "second": "2nd", "fourth": "4th", "fifth": "5th", "sixth": "6th", "seventh": "7th",
    "eighth": "8th", "ninth": "9th", "tenth": "10th", "once": "x1", "twice": "x2", "double": "x2",
    "triple": "x3", "thrice": "x3", "quadruple": "x4", "single": "1", "pair": "2", "couple": "2",
}
"""Number words as values (ordinals and multipliers kept apart from cardinals)."""

_OPERATOR_WORDS = {
    "plus": "+", "add": "+", "added": "+", "sum": "+", "minus": "-", "subtract": "-", "subtracted": "-",
    "difference": "-", "times": "*", "multiply": "*", "multiplied": "*", "product": "*", "divided": "/",
    "divide": "/", "over": "/", "quotient": "/", "squared": "^2", "cubed": "^3", "square": "^2", "cube": "^3",
    "root": "√", "sqrt": "√", "power": "^", "modulo": "%", "mod": "%", "percent": "%", "equals": "=",
    "factorial": "!", "log": "log", "logarithm": "log",
}
"""Arithmetic in words; counted only in questions that have a number (so "the difference between RAM and
ROM" is not a subtraction)."""

_SENTENCE_END = frozenset(".!?;:")


@dataclass(frozen=True, slots=True)
class Features:
    """What of a question must agree with another for them to share an answer."""

    content: frozenset[str]
    numbers: tuple[str, ...]
    operators: tuple[str, ...]
    negations: int
    anchors: frozenset[str]
    """Entities, units and numbers: their order in ``sequence`` must agree."""
    sequence: tuple[str, ...]
    """The content words and numbers in order."""
    roles: frozenset[tuple[str, str]]
    words: frozenset[str]
    """Every normalised word (for the role and opposite rules)."""
    quantifiers: frozenset[str]
    kinds: frozenset[str]
    persons: tuple[str, ...]
    tenses: frozenset[str]
    modals: frozenset[str]
    particles: frozenset[str]


def _expand(word: str) -> list[str]:
    w = word.replace("’", "'")
    if w in _CONTRACTIONS:
        return _CONTRACTIONS[w]
    for suffix, parts in _SUFFIXES.items():
        if w.endswith(suffix) and len(w) > len(suffix):
            return [w[: -len(suffix)], *parts]
    if w.endswith("'s"):
        return [w[:-2]]  # possessive or "is": either way nothing of the question
    if w.endswith("s'"):
        return [w[:-1]]
    return [w.replace("'", "")]


def _stem(word: str) -> str:
    """Singular of a plural, and nothing more (a stemmer that merges 'news' and 'new' makes wrong hits)."""
    if word in _SYNONYMS:
        return _SYNONYMS[word]
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ous")):
        word = word[:-1]
    return _SYNONYMS.get(word, word)


def _number(token: str) -> str:
    t = token.rstrip("%")
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
    if re.fullmatch(r"\d+\.\d+", t):
        t = t.rstrip("0").rstrip(".") if "." in t else t
    if re.fullmatch(r"\d+", t):
        t = str(int(t))
    return t + ("%" if token.endswith("%") else "")


def _is_operator(text: str, start: int, end: int) -> bool:
    """A ``-`` or ``/`` between letters is a hyphen or a slash ("long-term", "km/h"), not arithmetic."""
    symbol = text[start:end]
    if symbol not in "-/":
        return True
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalpha() or after.isalpha())


def features(text: str) -> Features:
    """What of ``text`` must agree with another question (computed once per question, kept with it)."""
    text = unicodedata.normalize("NFKC", text)
    content: set[str] = set()
    words: set[str] = set()
    sequence: list[str] = []
    numbers: list[str] = []
    operators: list[str] = []
    op_words: list[str] = []
    anchors: set[str] = set()
    roles: set[tuple[str, str]] = set()
    quantifiers: set[str] = set()
    kinds: set[str] = set()
    persons: list[str] = []
    tenses: set[str] = set()
    modals: set[str] = set()
    negations = 0
    sentence_start = True
    previous = ""
    previous_content = False
    role: str | None = None
    for match in _TOKEN.finditer(text):
        raw = match.group()
        start, end = match.span()
        if any(c in _SENTENCE_END for c in text[max(0, start - 3):start]):
            sentence_start = True
        if raw[0].isdigit():
            value = _number(raw)
            numbers.append(value)
            sequence.append(value)
            anchors.add(value)
            if role is not None:
                roles.add((role, value))
                role = None
            sentence_start, previous, previous_content = False, value, True
            continue
        if not raw[0].isalpha():
            if raw in _SYNONYMS:  # a currency sign: a unit
                unit = _SYNONYMS[raw]
                content.add(unit)
                words.add(unit)
                sequence.append(unit)
                anchors.add(unit)
            elif _is_operator(text, start, end):
                operators.append(raw)
            continue
        parts = _expand(raw.lower())
        # An entity: capitalised inside a sentence (a first word may be any word), an acronym, or mixed case.
        entity = (raw[0].isupper() and not sentence_start) or (len(raw) > 1 and raw.isupper()) or (
            any(c.isupper() for c in raw[1:]) and not raw.isupper())
        acronym = len(raw) > 1 and (raw.isupper() or any(c.isupper() for c in raw[1:]))
        if parts and (parts[0] in _PERSON or parts[0] == "i") and not acronym:
            entity = False  # "I", and a pronoun in a title-cased question (but "US" is a country)
        sentence_start = False
        for part in parts:
            if not part:
                continue
            stem = _SYNONYMS.get(part, part) if acronym else _stem(part)  # "HTTPS" is no plural of "HTTP"
            words.add(stem)
            if part in NEGATIONS:
                negations += 1
            if part in _WH:
                kinds.add(_WH[part])
            if part in ("many", "much") and previous == "how":
                kinds.add("quantity")
            asks_when = part in _WHEN_WORDS and previous in ("what", "which")
            if asks_when:
                kinds.add("time")
            if part in _PERSON and not entity and not (part in ("me", "us") and previous in FILLER):
                persons.append(_PERSON[part])  # (not "tell me", "give us": the request, not the question)
            if part in QUANTIFIERS:
                quantifiers.add(part)
            if part in _TENSE and not entity:
                tenses.add(_TENSE[part])
            if part in _MODAL and not entity:
                modals.add(_MODAL[part])
            if part in _NUMBER_WORDS and not entity:
                value = _NUMBER_WORDS[part]
                numbers.append(value)
                sequence.append(value)
                anchors.add(value)
            if part in _OPERATOR_WORDS:
                op_words.append(_OPERATOR_WORDS[part])
            is_content = entity or (part not in FUNCTION_WORDS and part not in FILLER and not asks_when)
            if part in FILLER and persons and previous == "you":
                persons.pop()  # "can you tell", "could you explain": the request, not the question
            if part in ROLES and not entity and (part != "to" or (previous_content and previous not in _INFINITIVE)):
                role = part
            elif is_content:
                if part not in _NUMBER_WORDS or entity:
                    content.add(stem)
                    sequence.append(stem)
                if entity or stem in UNITS:
                    anchors.add(stem)
                if role is not None:
                    roles.add((role, stem))
                    role = None
            previous, previous_content = part, is_content
    if numbers:
        operators += op_words
    return Features(frozenset(content), tuple(numbers), tuple(sorted(operators)), negations, frozenset(anchors),
                    tuple(sequence), frozenset(roles), frozenset(words), frozenset(quantifiers), frozenset(kinds),
                    tuple(p for i, p in enumerate(persons) if i == 0 or persons[i - 1] != p), frozenset(tenses),
                    frozenset(modals), frozenset(m.lower() for m in _FINAL_PARTICLE.findall(text)))


def _anchored(f: Features, others: frozenset[str]) -> list[str]:
    both = f.anchors | others
    return [w for w in f.sequence if w in both]


def _one_block_apart(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether the content words come in the same order, or one run of them moved ("the largest ocean" / "the
    ocean that is largest"), not two swapped around a third ("dogs chase cats" / "cats chase dogs")."""
    x, y = list(dict.fromkeys(a)), list(dict.fromkeys(b))
    if x == y:
        return True
    if sorted(x) != sorted(y) or len(x) > 40:
        return False
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n + 1):
            block, rest = x[i:j], x[:i] + x[j:]
            for k in range(len(rest) + 1):
                if k != i and rest[:k] + block + rest[k:] == y:
                    return True
    return False


def _connective_swap(a: Features, b: Features) -> bool:
    only_a = (a.words - b.words) & CONNECTIVES
    only_b = (b.words - a.words) & CONNECTIVES
    return bool(only_a and only_b and (only_a | only_b) & CONJUNCTIONS)


def _role_conflict(a: Features, b: Features) -> bool:
    return any(word in b.words and (role, word) not in b.roles for role, word in a.roles)


def _opposed(a: Features, b: Features) -> bool:
    return any(OPPOSITE[w] in b.words and w not in b.words for w in a.words if w in OPPOSITE)


def refusal(a: Features, b: Features) -> str | None:
    """Why two questions may not share an answer, or None if nothing but their wording differs."""
    if a.numbers != b.numbers:
        return "numbers"
    if a.operators != b.operators:
        return "operators"
    if a.negations != b.negations:
        return "negation"
    if a.content != b.content:
        return "content words"
    if _anchored(a, b.anchors) != _anchored(b, a.anchors):
        return "order of entities, units or numbers"
    if not _one_block_apart(a.sequence, b.sequence):
        return "order of content words"
    if _role_conflict(a, b) or _role_conflict(b, a):
        return "roles"
    if _opposed(a, b) or _opposed(b, a):
        return "opposite particles"
    if a.quantifiers != b.quantifiers:
        return "quantifiers"
    if a.kinds != b.kinds:
        return "kind of question"
    if a.persons and b.persons and a.persons != b.persons:  # in order: "can you see my" / "can I see your"
        return "persons"
    if a.tenses and b.tenses and a.tenses != b.tenses:
        return "tense"
    if a.modals and b.modals and a.modals != b.modals:
        return "modality"
    if _connective_swap(a, b):
        return "connectives"
    if a.particles and b.particles and a.particles != b.particles:
        return "particles"
    return None
