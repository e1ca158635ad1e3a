"""Answer extraction exactly as the original evaluators do it, quirks included.

The original `parse_multi_choice_response` draws an unseeded `random.choice` when nothing matches and crashes on an empty
response (`response[0]`). Here the fallback draws from a caller-given `random.Random` and is reported, so runs are
reproducible and the number of guesses is visible; an empty response is a counted fallback, never a crash.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

# Stripped one after the other (not as one set), in this order, as the original loop does.
_STRIP_ORDER = (",", ".", "!", "?", ";", ":", "'")


@dataclass(frozen=True)
class Choice:
    """A parsed multiple-choice answer: the letter, and whether it was a random fallback."""

    letter: str
    fallback: bool


def question_rng(seed: int, qid: str) -> random.Random:
    """The fallback generator of one question: depends only on (seed, id), so resumed or reordered runs agree."""
    return random.Random(f"{seed}:{qid}")


def parse_multi_choice_response(
    response: str, all_choices: Sequence[str], index2ans: Mapping[str, str], rng: random.Random
) -> Choice:
    """The letter a free-form response chooses, by the original's rules.

    1. strip whitespace, then each of `, . ! ? ; : '` from both ends in turn; a first character that is a choice wins;
    2. otherwise choices written as "(X)"; if none, as " X " (the response padded with spaces);
    3. if none and the response has more than 5 words, choices whose option text occurs in it (case-insensitive);
    4. several candidates -> the one matched last (ties: the earliest choice); none -> `rng.choice(all_choices)`.
    """
    response = response.strip()
    for char in _STRIP_ORDER:
        response = response.strip(char)
    if not response:
        return Choice(rng.choice(list(all_choices)), True)
    if response[0] in all_choices:
        return Choice(response[0], False)
    padded = f" {response} "

    bracketed = [c for c in all_choices if f"({c})" in padded]
    if bracketed:
        return Choice(_last(bracketed, lambda c: padded.rfind(f"({c})")), False)
    spaced = [c for c in all_choices if f" {c} " in padded]
    if spaced:
        return Choice(_last(spaced, lambda c: padded.rfind(f" {c} ")), False)
    if len(padded.split()) > 5:
        lowered = padded.lower()
        by_text = [c for c, text in index2ans.items() if text.lower() in lowered]
        if by_text:
            return Choice(_last(by_text, lambda c: lowered.rfind(index2ans[c].lower())), False)
    return Choice(rng.choice(list(all_choices)), True)


def _last(candidates: list[str], position) -> str:
    """The candidate whose match starts last; ties go to the earliest candidate (numpy argmax semantics)."""
    if len(candidates) == 1:
        return candidates[0]
    return max(candidates, key=position)


def open_ended_match(output: str, answer: str) -> bool:
    """MMVU open-ended scoring: the shorter of (output, answer) must occur in the longer, case-insensitively.

    As in the original, the output is compared raw (not stripped) and an output no longer than the answer is checked as a
    substring of the answer, so an empty output counts as a match; callers report empty outputs separately.
    """
    if len(output) > len(answer):
        return answer.lower() in output.lower()
    return output.lower() in answer.lower()
