"""Document shaping and scoring of Crescent's lm-eval tasks (`!function utils.*` in the YAMLs).

This file is copied next to the rendered YAMLs, so it imports nothing from Crescent: the
rendered task dir works with a plain `lm_eval --include_path <dir>`.
"""

from __future__ import annotations

import re

FINAL_LINE = "The answer is:"  # how MATH-500 answers end, and Crescent's training responses too
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def split_gsm8k(answer: str) -> tuple[str, str] | None:
    """A GSM8K reference solution -> (its steps with the calculator annotations (`<<3*4=12>>`)
    dropped, its final answer after `####`); None when it has no `####` line. Crescent's one
    reading of GSM8K's gold: the gold-solution task below and the gold ceiling's pairs."""
    steps, sep, final = _CALCULATOR.sub("", answer).rpartition("####")
    return (steps.rstrip(), final.strip()) if sep else None


def gold_solution(answer: str) -> str:
    """A GSM8K reference solution in the form Crescent trains on: the closing `#### N` becomes
    `The answer is: N`."""
    split = split_gsm8k(answer)
    if split is None:
        return answer.strip()
    steps, final = split
    return f"{steps}\n{FINAL_LINE} {final}"


def gsm8k_gold_docs(dataset):
    return dataset.map(lambda doc: {"solution": gold_solution(doc["answer"])})


def gold_bpb_results(doc: dict, results: list) -> dict:
    """Log-likelihood of the gold solution -> bits per byte (lower is better) and nats per doc."""
    ll, _is_greedy = results[0]
    n_bytes = len(doc["solution"].encode("utf-8"))
    # The `bits_per_byte` aggregation is -sum(ll) / sum(bytes) / ln 2: weighted by length.
    return {"bits_per_byte": (ll, n_bytes), "logprob": ll}


def split_math500(answer: str) -> tuple[str, str]:
    """MATH-500 `answer` field -> (solution with its \\boxed{}, final answer after the last
    `The answer is:`)."""
    solution, sep, final = answer.rpartition(FINAL_LINE)
    if not sep:
        return answer.strip(), ""
    return solution.strip(), final.strip()


def math500_docs(dataset):
    def shape(doc: dict) -> dict:
        solution, final = split_math500(doc["answer"])
        return {"problem": doc["question"], "solution": solution, "answer": final}

    return dataset.map(shape)


def math500_results(doc: dict, results: list[str]) -> dict:
    """`math_verify` as in lm-eval's minerva_math: the response checked against the reference
    (its \\boxed{} answer, or the final answer when the solution has none)."""
    from math_verify import parse, verify

    gold = parse(doc["solution"]) or parse(f"${doc['answer']}$")
    response = results[0]
    # Crescent-trained models close with "The answer is: X", often without $...$.
    _, sep, final = response.rpartition(FINAL_LINE)
    target = parse(f"${final.strip().rstrip('.')}$") if sep else []
    if not target:
        target = parse(response)
    return {"math_verify": int(bool(gold) and bool(target) and verify(gold, target))}


def minerva_fewshot_samples() -> list[dict]:
    """The 4 Minerva few-shot examples of lm-eval's minerva_math tasks, copied: importing that
    module asserts antlr4-python3-runtime==4.11, which this project's environment does not pin."""
    return [
        {
            "problem": "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
            "solution": "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.",
            "few_shot": "1",
        },
        {
            "problem": "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
            "solution": "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
            "few_shot": "1",
        },
        {
            "problem": "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times must Terrell lift them in order to lift the same total weight?",
            "solution": "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct.",
            "few_shot": "1",
        },
        {
            "problem": "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
            "solution": "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
            "few_shot": "1",
        },
    ]
