"""Final-answer extraction, equivalence and answer-line stripping, on hand-written chains of thought."""

from __future__ import annotations

import pytest

from crescent.errors import CrescentError
from crescent.methods.extraction import (
    answers_equal,
    canonicality,
    extract_answer,
    strip_final_answer,
)

MATH = [
    # explicit final-answer markers
    ("Janet sells 9 eggs.\n#### 42", "42"),
    ("She makes 9 * 2 = 18 dollars.\n#### 1,080", "1080"),
    ("The answer is 42", "42"),
    ("First 3 + 4 = 7.\nThe answer is: 7", "7"),
    ("So the final answer is 12.", "12"),
    ("**Answer:** 15", "15"),
    ("The answer is: **8**", "8"),
    ("The answer is 2 + 3 = 5.", "5"),
    ("The answer is x = 5.", "5"),
    ("There are 3 cats. The answer is:\n\n17", "17"),
    ("We get 5 first.\nThe answer is: 6\nWait, recheck: the answer is 7", "7"),
    ("The answer is: 12 apples and 3 oranges.", "12"),
    # \boxed{}: nested braces, last one wins, markers around it
    (r"So $x = \boxed{5}$.", "5"),
    (r"Hence \boxed{\frac{3}{4}}.", "3/4"),
    (r"First \boxed{2}, then corrected: \boxed{3}", "3"),
    (r"The final answer is $\boxed{\frac{\sqrt{3}}{2}}$.", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{x^2+1}", "x^2+1"),
    (r"\boxed{[-2, 7)}", "[-2, 7)"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"( 3, \frac{\pi}{2} )"),
    (r"The answer is 3\sqrt{13}", r"3\sqrt{13}"),
    (r"\boxed{\text{(C)}}", r"\text{(C)}"),
    (r"\fbox{12}", "12"),
    (r"So $\boxed{7}$ is it, not \boxed{8", "7"),
    # thousands separators, currency, percent, units, trailing periods
    ("The total is 1,000 dollars.", "1000"),
    ("The answer is $1,234,567.", "1234567"),
    ("It costs $5.", "5"),
    ("She earns 5 dollars.", "5"),
    ("The answer is: €12.50", "12.5"),
    ("The discount is 25%.", "25"),
    (r"\boxed{50\%}", "50"),
    ("She picked 5 apples", "5"),
    ("They walked 3 km", "3"),
    (r"\boxed{5.4 \text{ cents}}", "5.4"),
    (r"\boxed{864 \mbox{ inches}^2}", "864"),
    (r"\boxed{90^\circ}", "90"),
    (r"\boxed{10,\!080}", "10080"),
    (r"\boxed{\$32,\!348}", "32348"),
    # negatives, decimals, fractions, mixed numbers
    ("The temperature is -5 degrees.", "-5"),
    ("x = -4", "-4"),
    ("5 - 3 = 2", "2"),
    ("The answer is \u22127", "-7"),
    ("Each costs 3.50", "3.5"),
    ("The answer is 3.0", "3"),
    ("It is .5 of the cake", "0.5"),
    ("#### 007.50", "7.5"),
    ("The answer is -0.0", "0"),
    ("The answer is 123,456,789,012,345,678,901,234,567,890", "123456789012345678901234567890"),
    ("The answer is 3/4", "3/4"),
    ("We reduce 6/8", "3/4"),
    (r"The answer is \frac{3}{4}", "3/4"),
    (r"\boxed{\dfrac{6}{8}}", "3/4"),
    (r"The answer is \tfrac{1}{2}", "1/2"),
    (r"\boxed{\frac43}", "4/3"),
    (r"\boxed{-\frac{35}{9}}", "-35/9"),
    ("She needs 2 1/2 cups", "5/2"),
    (r"The answer is 2\frac{1}{2}", "5/2"),
    (r"\boxed{137 \frac{1}{2}}", "275/2"),
    # the last number as fallback: the result after the last `=` beats numbers after it
    ("She had 3 apples and bought 4 more, so she has 7", "7"),
    ("9 + 6 = 15 liters of water out of the 24 liters.", "15"),
    ("He makes $<<6*2=12>>12 in 6 hours", "6"),
    ("It costs 12/day / 6 hours/day = $2/hour", "2"),
    # abstentions: no number at all
    ("I don't know.", None),
    ("The answer is: nothing fits here.", None),
    ("", None),
    (r"\boxed{}", None),
]


@pytest.mark.parametrize("text, expected", MATH)
def test_extract_math(text, expected):
    assert extract_answer(text) == expected


TEXT = [
    ("The capital is clear.\nThe answer is: Paris", "paris"),
    ("The answer is: **Blue Whale**.", "blue whale"),
    ('Thinking...\nThe answer is "yes"!', "yes"),
    ("#### `True`", "true"),
    ("First I thought the answer is no.\nThe answer is: Yes", "yes"),
    ("It is Paris, of course.", None),
    ("The answer is: ...", None),
]


@pytest.mark.parametrize("text, expected", TEXT)
def test_extract_text(text, expected):
    assert extract_answer(text, "text") == expected


def test_unknown_answer_type_names_the_key():
    with pytest.raises(CrescentError, match="answer_type"):
        extract_answer("42", "poetry")


EQUAL = [
    ("0.5", "1/2"),
    ("1/2", r"\frac{1}{2}"),
    (r"\frac{1}{2}", "0.5"),
    (r"\dfrac{1}{2}", "0.50"),
    ("1,000", "1000"),
    ("3.0", "3"),
    ("50%", "50"),
    (r"90^\circ", "90"),
    ("1.0000001", "1"),  # relative difference 1e-7: within tolerance
    ("0.333333", "1/3"),
    ("x=5", "5"),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2"),
    ("1,-2", "-2,1"),
    (r"\left[ -2, 7 \right)", "[-2,7)"),
    (r"\text{Evelyn}", "evelyn"),
]
UNEQUAL = [
    ("-2", "2"),
    ("1.00001", "1"),  # relative difference 1e-5: beyond tolerance
    ("0.33", "1/3"),
    ("1000001", "1000000"),  # integers compare exactly, no tolerance
    ("50%", "0.5"),  # a percent sign is dropped, not divided by 100
    ("3/4", "4/3"),
    ("(1,2)", "[1,2]"),
    ("paris", "sapir"),  # sympy would read both as the product p*a*r*i*s
    (r"\text{Evelyn}", r"\text{Navin}"),
    ("x^2+1", "x^2-1"),
]


@pytest.mark.parametrize("a, b", EQUAL)
def test_answers_equal(a, b):
    assert answers_equal(a, b)
    assert answers_equal(b, a)


@pytest.mark.parametrize("a, b", UNEQUAL)
def test_answers_unequal(a, b):
    assert not answers_equal(a, b)
    assert not answers_equal(b, a)


def test_canonicality_orders_integer_decimal_fraction_latex():
    ranks = [canonicality(a) for a in ("-12", "0.5", "1/2", r"\frac{1}{2}", "x+1")]
    assert ranks == sorted(ranks)
    assert ranks[0] < ranks[1] < ranks[2] < ranks[3] == ranks[4]


STRIP = [
    ("Step one: 3 + 4 = 7.\nThe answer is: 7", "Step one: 3 + 4 = 7."),
    ("He earns 9 * 2 = 18 dollars.\n#### 18\n", "He earns 9 * 2 = 18 dollars."),
    ("Janet makes 9*2 = $18.50. So the answer is 18.50.", "Janet makes 9*2 = $18.50."),
    ("Add them: 2 + 3 = 5.\n\n$\\boxed{5}$.\n\nThe answer is: 5", "Add them: 2 + 3 = 5."),
    ("Add them.\n\\[\n\\boxed{5}\n\\]", "Add them."),
    ("So\n\\[\nx = 5\n\\]", "So\n\\[\nx = 5\n\\]"),
    ("Thus $x = \\boxed{5}$.", "Thus $x = \\boxed{5}$."),
    (
        "The answer is 5 because 2 + 3 = 5.\nI checked twice.",
        "The answer is 5 because 2 + 3 = 5.\nI checked twice.",
    ),
    ("**Final Answer:** 12", ""),
]


@pytest.mark.parametrize("response, expected", STRIP)
def test_strip_final_answer(response, expected):
    assert strip_final_answer(response) == expected


def test_strip_then_append_extracts_the_same_answer():
    response = "First 12 / 4 = 3.\nSo she has $\\boxed{3}$ left.\nThe answer is: 3"
    clean = strip_final_answer(response) + "\nThe answer is: 3"
    assert clean.count("The answer is") == 1
    assert extract_answer(clean) == extract_answer(response) == "3"
