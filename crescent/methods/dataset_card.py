"""DATASET.md, the answers stage's dataset card: where the data came from, how it was filtered,
and how sure the votes were."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from crescent.infra.io import atomic_write_text


def write_card(out: Path, cfg: DictConfig, stats: dict) -> None:
    """DATASET.md: where the data came from, how it was filtered, and how sure the votes were."""
    source = Path(cfg.model.name)
    widest = max(stats["agreement_histogram"].values(), default=0) or 1
    bars = "\n".join(f"{key:>6}  {'#' * round(30 * n / widest):<30}  {n}"
                     for key, n in stats["agreement_histogram"].items())
    settings = {"model": cfg.model, "domain": {"name": cfg.domain.name,
                                               "answer_prompt": cfg.domain.answer_prompt},
                "voting": cfg.voting, "answers": cfg.answers, "seed": cfg.seed}
    card = f"""# {cfg.name}: self-generated {cfg.domain.name} question-answer pairs

Generated with no external supervision by `{source.name or cfg.model.name}`: the model wrote
the questions, answered each {cfg.voting.k} times, and a question was kept only when its
majority answer won at least {cfg.voting.min_agreement:.0%} of the samples and
{cfg.voting.min_votes} votes. Answers were never checked against any ground truth.
{_truncation_line(cfg, stats)}

Files: `sft.jsonl` (chat `messages`, ready for fine-tuning), `qa.jsonl` (question, answer,
chosen response, votes, agreement), `prefs.jsonl` ({stats['pairs']} preference pairs from
{stats['pair_questions']} kept questions: a sample with the winning answer chosen, one with
another answer or none rejected, and the margin of their vote shares), `samples.jsonl` (every
sample of every question), `dataset/` (the same rows as a Hugging Face `datasets` DatasetDict,
`train` and `prefs` splits: `datasets.load_from_disk`,
then `push_to_hub` to share it).

## Funnel

| step | questions |
| --- | ---: |
| questions in | {stats['questions_in']} |
| dropped: longer than domain.max_question_chars | {len(stats['too_long'])} |
| dropped: 13-gram overlap with a benchmark test set | {stats['contaminated']} |
| answered ({cfg.voting.k} samples each; {stats['truncated_share'] or 0:.1%} truncated) | {stats['answered']} |
| dropped: every sample abstained | {stats['dropped'].get('abstained', 0)} |
| dropped: no consensus | {stats['dropped'].get('no_consensus', 0)} |
| dropped: tie | {stats['dropped'].get('tie', 0)} |
| dropped: beyond the size consensus keeps (control.match_kept_of_k) | {stats['dropped'].get('over_match', 0)} |
| kept | {stats['kept']} |

## Agreement (samples agreeing with the plurality answer, answered questions)

```
{bars}
```

## Settings

```yaml
{OmegaConf.to_yaml(OmegaConf.create(settings)).rstrip()}
```
"""
    atomic_write_text(out / "DATASET.md", card)


def _truncation_line(cfg: DictConfig, stats: dict) -> str:
    share = stats["truncated_share"]
    what = ("abstained (no vote, counted in the denominator)" if cfg.voting.drop_truncated
            else "voted like the others")
    return (f"\n{stats['truncated']} of the {stats['samples']} samples voted on "
            f"({0 if share is None else share:.1%}) ended at the {cfg.answers.sampling.max_tokens}-token "
            f"limit (truncated) and {what}.\n")
