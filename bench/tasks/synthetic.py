"""Offline tasks generated deterministically from a seed, in the same row format as hub datasets.

They are small on purpose: a 2-layer model learns them in a few hundred steps on a CPU, so the smoke
suite separates methods that learn from methods that do not, in minutes.
"""

from __future__ import annotations

import random
import zlib

POSITIVE = ["good", "great", "excellent", "superb", "lovely", "brilliant", "wonderful", "delightful"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "dull", "horrible", "boring", "dreadful"]
NEUTRAL = ["the", "a", "movie", "film", "plot", "actor", "scene", "story", "was", "is", "and", "but",
           "very", "quite", "really", "rather", "music", "ending", "cast", "script"]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Words templates and verbalizers use; listed so the tiny tokenizer keeps each one a single token.
PROMPT_WORDS = ["review", "sentiment", "positive", "negative", "score", "spell", "answer", "question",
                "premise", "hypothesis", "sentence", "yes", "no", "entailment", "which", "word", "appears",
                "in", "does", "it", "say", "or"]

# Polar word counts (positive, negative) a sentence may hold; never a tie, so labels are unambiguous.
_POLAR_COUNTS = [(p, n) for p in range(5) for n in range(5) if p != n and 1 <= p + n <= 4]


def lexicon() -> list[str]:
    """Every word a synthetic task can produce, for the tiny tokenizer's training corpus."""
    return POSITIVE + NEGATIVE + NEUTRAL + DIGIT_WORDS + PROMPT_WORDS + [str(d) for d in range(10)]


def _polar_sentence(rng: random.Random) -> tuple[str, int, int]:
    pos, neg = rng.choice(_POLAR_COUNTS)
    length = rng.randint(8, 14)
    words = [rng.choice(NEUTRAL) for _ in range(length - pos - neg)]
    words += [rng.choice(POSITIVE) for _ in range(pos)] + [rng.choice(NEGATIVE) for _ in range(neg)]
    rng.shuffle(words)
    return " ".join(words), pos, neg


def polarity(n: int, seed: int) -> list[dict]:
    """Binary sentiment: label 1 when the sentence holds more positive than negative words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sentence, pos, neg = _polar_sentence(rng)
        rows.append({"idx": i, "sentence": sentence, "label": int(pos > neg)})
    return rows


def intensity(n: int, seed: int) -> list[dict]:
    """Regression in [0, 5] like STS-B: 2.5 + 0.625 × (positive − negative word count)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sentence, pos, neg = _polar_sentence(rng)
        rows.append({"idx": i, "sentence": sentence, "label": 2.5 + 0.625 * (pos - neg)})
    return rows


def digits(n: int, seed: int) -> list[dict]:
    """Generation: spell out 3-6 digits as words, in order ("7 3" -> "seven three")."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ds = [rng.randrange(10) for _ in range(rng.randint(3, 6))]
        rows.append({"idx": i, "digits": " ".join(map(str, ds)),
                     "words": " ".join(DIGIT_WORDS[d] for d in ds)})
    return rows


def choice(n: int, seed: int) -> list[dict]:
    """Multiple choice: which of two words appears in the sentence? (chance 50%)"""
    rng = random.Random(seed)
    vocabulary = POSITIVE + NEGATIVE + NEUTRAL
    rows = []
    for i in range(n):
        sentence, _, _ = _polar_sentence(rng)
        words = sentence.split()
        present = rng.choice(words)
        absent = rng.choice([w for w in vocabulary if w not in words])
        label = rng.randrange(2)
        options = [present, absent] if label == 0 else [absent, present]
        rows.append({"idx": i, "sentence": sentence, "choice1": options[0], "choice2": options[1], "label": label})
    return rows


# A synthetic cross-lingual task (bench/tasks/crosslingual.py) renders its generator's rows in each language: `en`
# as drawn, any other code through a fixed permutation of the lexicon drawn from the code, the same rows
# translated word by word in every language (a parallel evaluation set, as XNLI's).
def lexicon_map(language: str) -> dict[str, str]:
    """A synthetic language: every word of the synthetic lexicon sent to another, by a permutation drawn from the
    language's code (CRC-32 seeded); `en` keeps the words."""
    words = POSITIVE + NEGATIVE + NEUTRAL
    if language == "en":
        return {w: w for w in words}
    shuffled = list(words)
    random.Random(zlib.crc32(language.encode())).shuffle(shuffled)
    return dict(zip(words, shuffled))


def translate(rows: list[dict], columns: tuple[str, ...], language: str) -> list[dict]:
    """The rows with each text column rendered word by word in a synthetic language (labels kept)."""
    mapping = lexicon_map(language)
    return [{**row, **{c: " ".join(mapping.get(w, w) for w in str(row[c]).split()) for c in columns}}
            for row in rows]


GENERATORS = {"polarity": polarity, "intensity": intensity, "digits": digits, "choice": choice}
