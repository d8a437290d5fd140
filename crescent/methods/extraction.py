"""Final-answer extraction from chains of thought, and the equivalence that groups answers for voting.

Where the answer is (first rule that applies):
1. the text after the last final-answer marker (`#### `, `The answer is`, `The final answer is:`,
   `Answer:`): a `\\boxed{}` there, else that line read as a number, else as LaTeX;
2. the last balanced `\\boxed{...}` (or `\\fbox{...}`) anywhere;
3. the last line with a number: the result after its last `=` (`9 + 6 = 15 liters of the 24`),
   else its last number.
A final-answer line without an answer falls through to the next rule, since `Answer:` also
occurs in prose. No number at all is an abstention (None), never a vote.

What the extracted string looks like: numbers are canonical (`1,000.50` -> `1000.5`, `3.0` -> `3`,
`\\dfrac{6}{8}` and `6/8` -> `3/4`, `2 1/2` and `2\\frac{1}{2}` -> `5/2`); currency signs, percent
signs, unit words (`5 apples`, `3 km`, `5\\text{ cm}`, `90^\\circ`) and trailing periods are
dropped. A boxed answer that is not a number (`x^2+1`, an interval, a matrix) is kept as
normalised LaTeX (`\\dfrac` -> `\\frac`, no `\\left`/`\\right`, no thin spaces, no `$`).

Equivalence decisions (`answers_equal`):
- Numbers compare by value: `0.5` == `1/2` == `\\frac{1}{2}`, `1,000` == `1000`, `3.0` == `3`,
  `-2` != `2`. Integers and fractions compare exactly; when either side is written as a
  decimal, a relative difference up to 1e-6 still counts as equal (`0.333333` == `1/3`, but
  `0.33` != `1/3`).
- A percent sign is dropped, not divided by 100: `50%` == `50` and `50%` != `0.5`. This is
  GSM8K's convention (the gold answer to "what percentage ..." is the bare number), and a
  question that asks for a fraction is answered without a percent sign anyway.
- Anything else is compared by math-verify (sympy): `x=5` == `5`, `\\frac{\\sqrt2}{2}` ==
  `\\sqrt{2}/2`, `1,-2` == `-2,1`, equal intervals and matrices.
- Plain words (`\\text{Evelyn}`, `even`) compare as case-insensitive text, because sympy would
  read them as products of symbols (`paris` == `sapir`).
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache

# A number as it is written in a chain of thought, after `_normalise`. The sign needs no word
# or closing bracket right before it, so the `-` of `5-3` is an operator, not part of `-3`.
_NUMBER = re.compile(
    r"""
    (?P<sign>(?<![\w)\]}])-)?
    (?<![\d.])
    (?:
        (?P<mixed_whole>\d+)\s*\\frac\{(?P<mixed_num>\d+)\}\{(?P<mixed_den>[1-9]\d*)\}  # 2\frac{1}{2}
      | \\frac\{(?P<frac_num>\d+)\}\{(?P<frac_den>[1-9]\d*)\}                       # \frac{3}{4}
      | (?P<whole>\d+)\s+(?P<num>\d+)/(?P<den>[1-9]\d*)                             # 2 1/2
      | (?P<slash_num>\d+)/(?P<slash_den>[1-9]\d*)                                  # 3/4
      | (?P<decimal>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)            # 1,000.5
    )
    (?!\d|/\d)
    """,
    re.VERBOSE,
)

# Spellings that mean the same thing, rewritten to one form before anything is read.
_NORMALISE = [
    (r"<<[^<>\n]*>>", ""),  # GSM8K calculator annotations: 2*3=<<2*3=6>>6
    ("\u2212", "-"),  # unicode minus
    (r"\\[dt]frac", r"\\frac"),
    (r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}"),  # \frac43
    (r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{"),  # \frac9{19}
    (r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}"),  # \frac{270}7
    (r"\\(?:left|right)(?![a-zA-Z])", ""),
    (r"(?<!\\)\\[,!;: ]\s*", ""),  # LaTeX spacing, also inside numbers: 10,\!080; not `\\ `
    (r"\\?[$€£¥]", ""),  # currency, and `$` math delimiters
    (r"[ \t]+", " "),
]

# What may surround a number that is still just that number: units, degrees, percent.
_UNITS = [
    (r"\\(?:text|mbox|mathrm|textrm|textbf)\{([^{}]*)\}", r" \1"),
    (r"\^\s*\{?\\circ\}?", " degrees"),
    (r"\\%", "%"),
]
_WHOLE_NUMBER_TAIL = re.compile(r"\s*%?(?:\s+[a-zA-Z][a-zA-Z .]*(?:\^[23])?)?")

_MARKER = re.compile(r"####|\b(?:final\s+)?answer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_HINT = re.compile(r"[\\^_{}]")  # the answer line is a formula, not a number in prose
_WORD = re.compile(r"[a-zA-Z]{2,}(?: [a-zA-Z]+)*")
_TEXT_WRAPPING = " \t*_`'\"“”‘’.,;:!?"

# Canonical number forms, most canonical first; anything else ranks after them.
_CANONICAL_FORMS = [re.compile(p) for p in (r"-?\d+", r"-?\d*\.\d+", r"-?\d+/\d+")]


def extract_answer(text: str, answer_type: str = "math") -> str | None:
    """The final answer of a chain of thought as the answer format `answer_type` reads it
    (crescent/domains/), normalised; None is an abstention."""
    from crescent.registry import ANSWER_FORMATS

    return ANSWER_FORMATS.get(answer_type).extract(text)


def extract_text(text: str) -> str | None:
    """A short answer in words: the first line after the last final-answer marker, lowercased
    and without wrapping punctuation."""
    rest = _after_last_marker(text)
    answer = _first_line(rest).strip(_TEXT_WRAPPING).lower() if rest is not None else ""
    return answer or None


def answers_equal(a: str, b: str) -> bool:
    """Mathematical equality (math-verify / sympy) with a relative numeric tolerance for decimals."""
    return _equal(a, b) if a <= b else _equal(b, a)  # one cache entry per unordered pair


def canonicality(answer: str) -> int:
    """Rank of an answer's form, lower is more canonical: integer < decimal < fraction < LaTeX."""
    return next(
        (rank for rank, form in enumerate(_CANONICAL_FORMS) if form.fullmatch(answer)),
        len(_CANONICAL_FORMS),
    )


def strip_final_answer(response: str) -> str:
    """The response without its trailing final-answer line(s), so a clean line can be appended.

    Removed from the end: the sentence from `The answer is ...` / `Answer: ...` / `#### ...` on,
    and lines that hold only a boxed answer (`$\\boxed{42}$.`).
    """
    lines = response.rstrip().splitlines()
    while lines:
        last = lines[-1]
        markers = list(_MARKER.finditer(last))
        if markers:
            lines[-1] = last[: _sentence_start(last, markers[-1].start())].rstrip()
        elif _is_boxed_only(last):
            lines[-1] = ""
        elif len(lines) >= 3 and _is_display_box(lines[-3:]):
            del lines[-3:]
        else:
            break
        while lines and not lines[-1].strip():
            lines.pop()
    return "\n".join(lines)


def extract_math(text: str) -> str | None:
    """A number or LaTeX answer, found by the rules in this module's docstring."""
    text = _normalise(text)
    rest = _after_last_marker(text)
    if rest is not None:
        answer = _boxed_answer(rest) or _answer_line(_first_line(rest))
        if answer is not None:
            return answer
    answer = _boxed_answer(text)
    if answer is not None:
        return answer
    lines = [line for line in text.splitlines() if _NUMBER.search(line)]
    return _prose_number(lines[-1], last=True) if lines else None


def _normalise(text: str) -> str:
    for pattern, replacement in _NORMALISE:
        text = re.sub(pattern, replacement, text)
    return text


def _after_last_marker(text: str) -> str | None:
    markers = list(_MARKER.finditer(text))
    return text[markers[-1].end() :] if markers else None


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _boxed_answer(text: str) -> str | None:
    """The last balanced `\\boxed{...}`: as a canonical number when it is one, else as LaTeX."""
    for box in reversed(list(_BOXED.finditer(text))):
        content = _braced(text, box.end())
        if content is not None and content.strip():
            content = content.strip().rstrip(".").strip()
            return _whole_number(content) or content
    return None


def _braced(text: str, start: int) -> str | None:
    """The text from `start` up to the `}` that closes the `{` just before it; None if unclosed."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def _answer_line(line: str) -> str | None:
    """The answer on a final-answer line: a number (with its units), a formula, or a number in prose."""
    line = line.strip(_TEXT_WRAPPING)
    number = _whole_number(line)
    if number is not None:
        return number
    if _LATEX_HINT.search(line):
        return line
    return _prose_number(line, last=False)


def _prose_number(line: str, last: bool) -> str | None:
    """The number a line of prose ends on: the result after its last `=`, else its first or last number."""
    # `9 + 6 = 15 liters out of the 24 liters`: the result of the computation, not a later number.
    result = _NUMBER.search(line.rsplit("=", 1)[1]) if "=" in line else None
    numbers = list(_NUMBER.finditer(line))
    match = result or (numbers[-1] if last else numbers[0] if numbers else None)
    return _canonical_number(match) if match else None


def _whole_number(text: str) -> str | None:
    """The canonical number if `text` is one number and nothing else but currency, percent or units."""
    for pattern, replacement in _UNITS:
        text = re.sub(pattern, replacement, text)
    text = text.strip().rstrip(".")
    match = _NUMBER.match(text)
    if match and _WHOLE_NUMBER_TAIL.fullmatch(text, match.end()):
        return _canonical_number(match)
    return None


def _canonical_number(match: re.Match) -> str:
    """An integer, a decimal without trailing zeros, or a reduced fraction."""
    if match["decimal"] is not None:
        # String surgery, not Decimal/float: exact for any number of digits.
        whole, _, fraction = match["decimal"].replace(",", "").partition(".")
        whole, fraction = str(int(whole or "0")), fraction.rstrip("0")
        text = f"{whole}.{fraction}" if fraction else whole
    else:
        whole = match["mixed_whole"] or match["whole"] or "0"
        num = match["mixed_num"] or match["num"] or match["frac_num"] or match["slash_num"]
        den = match["mixed_den"] or match["den"] or match["frac_den"] or match["slash_den"]
        text = str(int(whole) + Fraction(int(num), int(den)))
    return text if not match["sign"] or text == "0" else "-" + text


def _value(answer: str) -> tuple[Fraction, bool] | None:
    """The exact value of a numeric answer, and whether it was written as a decimal."""
    number = _whole_number(_normalise(answer))
    if number is None or canonicality(number) > 2:
        return None
    return Fraction(number), "." in number


@lru_cache(maxsize=1 << 16)
def _equal(a: str, b: str) -> bool:
    if a.strip() == b.strip():
        return True
    x, y = _value(a), _value(b)
    if x is not None and y is not None:
        if x[1] or y[1]:
            return abs(x[0] - y[0]) <= Fraction(1, 10**6) * max(abs(x[0]), abs(y[0]))
        return x[0] == y[0]
    a_word, b_word = _plain_words(a), _plain_words(b)
    if a_word or b_word:
        return a_word == b_word
    return _math_verify_equal(a, b)


def _plain_words(answer: str) -> str | None:
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", answer).strip(_TEXT_WRAPPING)
    return text.casefold() if _WORD.fullmatch(text) else None


def _math_verify_equal(a: str, b: str) -> bool:
    from math_verify import verify  # sympy-heavy: imported on the first non-numeric comparison

    timeout = _timeout()
    pa, pb = _parsed(a), _parsed(b)
    # verify() is asymmetric (gold vs prediction); grouping needs a symmetric relation.
    return bool(pa and pb) and (
        verify(pa, pb, timeout_seconds=timeout) or verify(pb, pa, timeout_seconds=timeout)
    )


@lru_cache(maxsize=1 << 14)
def _parsed(answer: str) -> list:
    from math_verify import parse

    return parse(f"${_normalise(answer)}$", parsing_timeout=_timeout())


def _timeout() -> int | None:
    # math-verify times out with signal.alarm, which only works in the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


def _sentence_start(line: str, end: int) -> int:
    """Where the sentence that contains position `end` starts (after `.`, `!`, `?` not in a number)."""
    stops = [m.end() for m in re.finditer(r"[.!?](?!\d)", line[:end])]
    return stops[-1] if stops else 0


def _is_display_box(lines: list[str]) -> bool:
    """`\\[`, a boxed answer, `\\]` on three lines (or between `$$` lines)."""
    opening, box, closing = (line.strip() for line in lines)
    return (opening, closing) in ((r"\[", r"\]"), ("$$", "$$")) and _is_boxed_only(box)


def _is_boxed_only(line: str) -> bool:
    boxes = list(_BOXED.finditer(line))
    content = _braced(line, boxes[-1].end()) if boxes else None
    if content is None:
        return False
    rest = line[: boxes[-1].start()] + line[boxes[-1].end() + len(content) + 1 :]
    return not re.sub(r"[\s$.\\\[\]()*:]|final|answer", "", rest, flags=re.IGNORECASE)
