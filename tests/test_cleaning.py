"""Cleaning of generated questions, on hand-written generations of the kind chat models produce."""

from __future__ import annotations

import pytest

from crescent.methods.cleaning import clean_question

KEPT = [
    (
        "Sure! Here's a new math problem:\n\nTom has $12.50 and buys 3 pens at $2.25 each. "
        "How much money does he have left?",
        "Tom has $12.50 and buys 3 pens at $2.25 each. How much money does he have left?",
    ),
    (
        "Problem: A recipe needs 3/4 cup of sugar for every 2 cups of flour. "
        "How much sugar is needed for 6 cups of flour?",
        "A recipe needs 3/4 cup of sugar for every 2 cups of flour. "
        "How much sugar is needed for 6 cups of flour?",
    ),
    (
        "**Problem:** The temperature was -5 degrees at night and rose by 12 degrees. "
        "What was the temperature at noon?\n\n**Solution:** -5 + 12 = 7",
        "The temperature was -5 degrees at night and rose by 12 degrees. "
        "What was the temperature at noon?",
    ),
    (
        "A store offers a 15% discount on a $80 jacket. What is the sale price?\n\nAnswer: $68",
        "A store offers a 15% discount on a $80 jacket. What is the sale price?",
    ),
    (
        "Certainly! Here is a problem for you:\nIf 2x + 3 = 11, what is the value of x?\n"
        "Solution: 2x = 8, so x = 4.",
        "If 2x + 3 = 11, what is the value of x?",
    ),
    (
        "What is the value of 2^5 + (3 - 1) * 4? Show the order of operations.",
        "What is the value of 2^5 + (3 - 1) * 4? Show the order of operations.",
    ),
    (
        "Lisa reads 20 pages a day. How many days does she need for a 180-page book? "
        "Assume she reads every day, weekends included.",
        "Lisa reads 20 pages a day. How many days does she need for a 180-page book? "
        "Assume she reads every day, weekends included.",
    ),
    (
        "Sure, here's one: Sam bought 4 boxes of 12 eggs. He broke 5. How many eggs are left?",
        "Sam bought 4 boxes of 12 eggs. He broke 5. How many eggs are left?",
    ),
    (
        '"A train travels 60 miles per hour for 2.5 hours. How far does it go?"',
        "A train travels 60 miles per hour for 2.5 hours. How far does it go?",
    ),
    (
        "### Word Problem\nMaria has 1 1/2 pizzas and eats 3/8 of a pizza. "
        "How much pizza is left?",
        "Maria has 1 1/2 pizzas and eats 3/8 of a pizza. How much pizza is left?",
    ),
    (
        "Here is a new math word problem:\n\nJohn's salary increased from $45,000 to $49,500. "
        "By what percentage did it increase?\n\nTo solve this, we find the difference first.",
        "John's salary increased from $45,000 to $49,500. By what percentage did it increase?",
    ),
    (
        "Question 3: A rectangle is 8.5 cm long and 4 cm wide. What is its area in cm^2?\n#### 34",
        "A rectangle is 8.5 cm long and 4 cm wide. What is its area in cm^2?",
    ),
    (
        "A bag has 5 red and 7 blue marbles. What is the probability of drawing a red marble? "
        "Express it as a fraction.\n\nThe answer is 5/12.",
        "A bag has 5 red and 7 blue marbles. What is the probability of drawing a red marble? "
        "Express it as a fraction.",
    ),
    (
        "Okay, here is a math problem.\nThe ratio of boys to girls is 3:4. "
        "If there are 21 boys, how many girls are there?",
        "The ratio of boys to girls is 3:4. If there are 21 boys, how many girls are there?",
    ),
    (
        "Here's a problem: The ratio of cats to dogs is 2:3 and there are 30 animals. "
        "How many cats are there?",
        "The ratio of cats to dogs is 2:3 and there are 30 animals. How many cats are there?",
    ),
    ("Solve for y: 3y - 7 = -1.", "Solve for y: 3y - 7 = -1."),
    (
        "Emma saves 25% of her $1,200 monthly income. After 6 months, how much has she saved?"
        "\n\nStep 1: Find 25% of $1,200.",
        "Emma saves 25% of her $1,200 monthly income. After 6 months, how much has she saved?",
    ),
    (
        "Problem:\nA car uses 0.08 liters of fuel per km. How many liters does it use for 350 km?",
        "A car uses 0.08 liters of fuel per km. How many liters does it use for 350 km?",
    ),
    (
        "Let me create one for you.\nA farmer has 120 chickens and sells 1/3 of them. "
        "How many are left?",
        "A farmer has 120 chickens and sells 1/3 of them. How many are left?",
    ),
    (
        "A pool is filled at 2.5 m^3/h and drained at 0.75 m^3/h. Starting empty, "
        "how long until it holds 14 m^3?\n\nExplanation: the net rate is 1.75 m^3/h.",
        "A pool is filled at 2.5 m^3/h and drained at 0.75 m^3/h. Starting empty, "
        "how long until it holds 14 m^3?",
    ),
    (
        "If f(x) = x^2 - 4x + 4, what is f(-2)?\n\nLet's solve it step by step.",
        "If f(x) = x^2 - 4x + 4, what is f(-2)?",
    ),
    (
        "The stock fell by -3.5% on Monday and rose 2% on Tuesday from $150.00. "
        "What is the price on Tuesday evening?",
        "The stock fell by -3.5% on Monday and rose 2% on Tuesday from $150.00. "
        "What is the price on Tuesday evening?",
    ),
]


@pytest.mark.parametrize("raw, expected", KEPT)
def test_statement_survives_intact(raw, expected):
    question, reason = clean_question(raw, max_chars=1000)
    assert reason is None
    assert question == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("I'm sorry, but I can't create that problem.", "refusal"),
        ("Sure! Here's a problem:", "empty"),
        ("   \n\n  ", "empty"),
        ("Problem: 5 apples", "too_short"),
        ("A farmer has many fields. " * 60 + "How many fields are there?", "too_long"),
    ],
)
def test_unusable_candidates_are_rejected_with_a_reason(raw, reason):
    assert clean_question(raw, max_chars=1000)[1] == reason


def test_over_long_depends_on_the_configured_limit():
    text = "Ann has 3 apples and buys 4 more. How many apples does she have now?"
    assert clean_question(text, max_chars=len(text))[1] is None
    assert clean_question(text, max_chars=len(text) - 1)[1] == "too_long"
