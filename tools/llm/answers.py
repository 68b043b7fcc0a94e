"""Reading which candidate an LLM judge picked, from whatever shape its answer takes.

Prompts number candidates from 1 (``1. Barack Obama``), so a number in an answer is 1-based;
``parse_choice`` returns the 0-based index into ``options``. Letters count from ``A``. Anything
unclear returns None, and the agent falls back to the pre-ranker and records why.

Read in this order, the first rule that yields exactly one index deciding:

1. JSON (``{"answer": 2}``, ``{"choice": "B"}``, ``{"name": "..."}``): its answer-like value;
2. the whole answer is a reference: ``2``, ``(2)``, ``[B]``, ``#2``, ``B.``, ``Candidate 2``, ``Option B``;
3. a stated decision: ``answer is 2``, ``Answer: (B)``, ``I choose candidate 3``, ``final answer: 2``
   (a bare letter only when the sentence ends after it: ``Answer: B.``);
4. explicit references anywhere: ``candidate 2``, ``option B``, ``(2)``, ``(B)``, ``[2]``, ``#2``;
5. option names in the text, longest match first (``Paris Hilton`` hides ``Paris`` within it).

A rule that finds two different indices makes the answer ambiguous (None) rather than passing
to the next rule, and a number rule that disagrees with a single named option is also None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_REF = r"(?:candidate|option|choice|entity|number|no\.?|index)"
_BRACKETED = r"\(\s*([A-Za-z]|\d{1,3})\s*\)|\[\s*([A-Za-z]|\d{1,3})\s*\]"
# A bare capital letter counts only when the sentence stops after it ("Answer: B."), so that
# "The answer is A former senator" is not read as option A.
_LETTER = r"(?-i:([A-Z]))(?=\s*(?:$|[.,;:!?)\]]))"
_WHOLE = re.compile(
    rf"^\W*(?:(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)?\s*)?(?:{_REF}\s*)?"
    rf"(?:{_BRACKETED}|#?(\d{{1,3}})|([A-Za-z]))\W*$",
    re.IGNORECASE,
)
_DECISION = re.compile(
    rf"(?:\banswer|\bchoose|\bchose|\bselect(?:ed)?|\bpick(?:ed)?|\bcorrect (?:one|candidate|entity|option) is|"
    rf"\bbest match is)\s*(?:is|:|=)?\s*(?:the\s+)?(?:{_REF}\s*:?\s*)?"
    rf"(?:{_BRACKETED}|#?(\d{{1,3}})\b|{_LETTER})",
    re.IGNORECASE,
)
_EXPLICIT = re.compile(
    r"\b(?:candidate|option|choice)\s*#?\s*(?:(\d{1,3})\b|\(?(?-i:([A-Z]))\)?(?!\w))"
    r"|\((\d{1,3}|(?-i:[A-Z]))\)|\[(\d{1,3})\]|#(\d{1,3})\b",
    re.IGNORECASE,
)
_JSON_KEYS = ("answer", "choice", "index", "candidate", "selected", "id", "name", "label", "entity")


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """0-based index of the option ``text`` picks (numbers in ``text`` are 1-based), else None."""
    if not options or not text or not text.strip():
        return None
    text = text.strip()
    decoded = _from_json(text)
    if decoded is not None:
        return parse_choice(decoded, options)
    named = _named(text, options)
    for rule in (_whole, _decision, _explicit):
        found = rule(text, len(options))
        if found is None:
            continue
        if len(found) != 1:
            return None
        (index,) = found
        return index if named is None or named == {index} or len(named) > 1 else None
    return next(iter(named)) if named is not None and len(named) == 1 else None


def _from_json(text: str) -> str | None:
    """The answer-like value of a JSON object answer (fenced in ``` or not), as text."""
    stripped = re.sub(r"^```(?:json)?\s*|\s*```$", "", text).strip()
    if not stripped.startswith("{"):
        return None
    try:
        data = json.loads(stripped)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    lowered = {str(k).lower(): v for k, v in data.items()}
    for key in _JSON_KEYS:
        value = lowered.get(key)
        if isinstance(value, int | str) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return ""


def _index(groups: Sequence[str | None], count: int) -> int | None:
    """A 1-based number or a letter, as a 0-based index when it names one of ``count`` options."""
    token = next((g for g in groups if g), None)
    if token is None:
        return None
    index = int(token) - 1 if token.isdigit() else ord(token.upper()) - ord("A")
    return index if 0 <= index < count else None


def _whole(text: str, count: int) -> set[int] | None:
    match = _WHOLE.match(text)
    if match is None:
        return None
    index = _index(match.groups(), count)
    return None if index is None else {index}


def _decision(text: str, count: int) -> set[int] | None:
    found = {i for m in _DECISION.finditer(text) if (i := _index(m.groups(), count)) is not None}
    return found or None


def _explicit(text: str, count: int) -> set[int] | None:
    found = {i for m in _EXPLICIT.finditer(text) if (i := _index(m.groups(), count)) is not None}
    return found or None


def _named(text: str, options: Sequence[str]) -> set[int] | None:
    """Indices of options whose name occurs in ``text`` (word-bounded, case-insensitive).

    A name found only inside a longer matched name (``Paris`` in ``Paris Hilton``) does not count.
    """
    spans: list[tuple[int, int, int]] = []
    for index, option in enumerate(options):
        name = option.strip()
        if not name:
            continue
        pattern = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE)
        spans += [(m.start(), m.end(), index) for m in pattern.finditer(text)]
    kept = {
        index
        for start, end, index in spans
        if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in spans)
    }
    return kept or None


# ------------------------------------------------------------------ distributions over indices


def index_options(count: int) -> tuple[str, ...]:
    """The answers a numbered list of ``count`` candidates allows: ``"1"`` .. ``str(count)``."""
    return tuple(str(i) for i in range(1, count + 1))


def distribution_from_top_logprobs(
    positions: Sequence[Sequence[tuple[str, float]]], generated: Sequence[str], options: Sequence[str]
) -> tuple[list[float], float, str | None, bool] | None:
    """(probabilities over ``options``, valid mass, most likely first token, approximate?) from an
    endpoint's ``top_logprobs``, or None when no option's first token is among them.

    ``positions[i]`` is the ``(token, logprob)`` list of answer position ``i`` and ``generated[i]``
    the token generated there. Tokens count with surrounding spaces stripped, and spellings of the
    same answer (``"2"``, ``" 2"``) are summed. An option that is one token takes its
    first-position probability. A longer one (``"10"`` where the tokenizer splits digits)
    shares its prefix's mass by the next position's probabilities when the answer went that
    way; otherwise the whole prefix mass goes to the shortest option and the result is marked
    approximate. An option absent from the list gets the mass left over, split evenly among
    the absent ones and never more than the least listed probability. The result is
    renormalised over ``options``: the distribution a decoder constrained to them would use.
    """
    if not positions or not options:
        return None
    first = _mass(positions[0])
    valid = {t: p for t, p in first.items() if any(o.startswith(t) for o in options) and t}
    if not valid:
        return None
    free_top = max(positions[0], key=lambda tp: tp[1])[0] if positions[0] else None
    probabilities: dict[str, float] = {}
    approximate = False
    for option in options:
        if option in first and not any(o != option and o.startswith(option) for o in options):
            probabilities[option] = first[option]
    for prefix, mass in valid.items():
        longer = [o for o in options if o.startswith(prefix) and o not in probabilities]
        if not longer:
            continue
        if len(longer) == 1 and longer[0] == prefix:
            probabilities[prefix] = mass
            continue
        went = len(generated) > 1 and generated[0].strip() == prefix and len(positions) > 1
        if went:
            second = _mass(positions[1])
            shares = {o: second.get(o[len(prefix) :], 0.0) for o in longer if o != prefix}
            if prefix in longer:
                shares[prefix] = max(1.0 - sum(shares.values()), 0.0)
            total = sum(shares.values()) or 1.0
            probabilities.update({o: mass * s / total for o, s in shares.items()})
        else:
            approximate = True
            probabilities[min(longer, key=len)] = mass
    missing = [o for o in options if o not in probabilities]
    if missing:
        listed = [p for p in first.values() if p > 0]
        left = max(1.0 - sum(first.values()), 0.0)
        floor = min(min(listed, default=1e-9), left / len(missing)) if left > 0 else 1e-9
        probabilities.update({o: max(floor, 1e-12) for o in missing})
    total = sum(probabilities[o] for o in options)
    return (
        [probabilities[o] / total for o in options],
        round(sum(valid.values()), 6),
        free_top,
        approximate,
    )


def _mass(position: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Probability per stripped token text (spellings of one token summed)."""
    import math

    found: dict[str, float] = {}
    for token, logprob in position:
        key = token.strip()
        found[key] = found.get(key, 0.0) + math.exp(logprob)
    return found
