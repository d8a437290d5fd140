"""Cleaning of generated questions: strip chat preambles, labels and trailing solutions.

The problem statement itself is kept as written: symbols such as `$ % / - = ( ) ^`,
numbers, decimals, fractions and every sentence after a first `?` all survive.
"""

from __future__ import annotations

import re

# A first line that only announces the problem ("Okay, here is a math problem.").
_PREAMBLE_LINE = re.compile(
    r"^\s*(?:sure|certainly|of course|absolutely|okay|ok|great|alright|here(?:'s| is| you go)"
    r"|below is|i(?:'d| would) be happy|let me|here's)\b[^\n]*$",
    re.IGNORECASE,
)
# The same announcement inline, up to its colon: "Sure, here's one: Tom has 3 apples."
_PREAMBLE_INLINE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|absolutely|okay|ok|great|alright)[!,.]?\s*)?"
    r"(?:here(?:'s| is)|below is)\b[^:\n]{0,80}:\s*",
    re.IGNORECASE,
)
# Labels in front of the statement: "Problem:", "**Question 1:**", "### Word Problem".
_LABEL = re.compile(
    r"^\s*(?:#+\s*)?\**\s*(?:new\s+|math\s+|word\s+)*(?:math\s+)?(?:word\s+)?"
    r"(?:problem|question|task|exercise)(?:\s*\d+)?\s*\**\s*[:.\-]?\s*\**\s*(?=\S|$)",
    re.IGNORECASE,
)
# Where a solution, answer or hint starts, at the start of a line.
_SOLUTION_START = re.compile(
    r"^\s*(?:#+\s*)?\**\s*(?:solution|answer|final answer|explanation|hint|step\s*1|steps"
    r"|to solve|let's solve|let us solve|let's break|we can solve|first,? we"
    r"|the answer is|therefore|so,? the answer)\b|^\s*####",
    re.IGNORECASE | re.MULTILINE,
)
_REFUSAL = re.compile(
    r"^\s*(?:i'm sorry|i am sorry|sorry,|i can(?:no|')t|as an ai|unfortunately)", re.IGNORECASE
)
_WRAPPING_QUOTES = ('"', "“", "”", "'", "`")
MIN_CHARS = 20  # shorter than any self-contained problem; what is left is a fragment


def clean_question(text: str, max_chars: int) -> tuple[str, str | None]:
    """Return (cleaned question, None) or (whatever was left, reason it is rejected)."""
    if _REFUSAL.match(text):
        return text.strip(), "refusal"
    lines = text.strip().splitlines()
    while lines:
        first = _PREAMBLE_INLINE.sub("", lines[0], count=1)
        # A digit means the statement itself may have started on this line: keep it.
        if first.strip() and not (_PREAMBLE_LINE.match(first) and not re.search(r"\d", first)):
            lines[0] = first
            break
        lines.pop(0)
    body = _LABEL.sub("", "\n".join(lines), count=1)
    cut = _SOLUTION_START.search(body)
    if cut:
        body = body[: cut.start()]
    body = re.sub(r"\*\*|__", "", body)  # markdown emphasis, never part of the maths
    body = re.sub(r"\s+", " ", body).strip()
    while len(body) >= 2 and body[0] in _WRAPPING_QUOTES and body[-1] in _WRAPPING_QUOTES:
        body = body[1:-1].strip()
    if not body:
        return body, "empty"
    if len(body) < MIN_CHARS:
        return body, "too_short"
    if len(body) > max_chars:
        return body, "too_long"
    return body, None
