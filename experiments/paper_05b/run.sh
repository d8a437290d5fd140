#!/usr/bin/env bash
# The whole paper_05b study, step by step; every step resumes, so after an interruption run the
# same command again: finished jobs are skipped in seconds (their stages are cache entries).
#   bash experiments/paper_05b/run.sh logger=none     (extra arguments go to every crescent run)
set -euo pipefail
cd "$(dirname "$0")/../.."
# 1. One replica of every row of the main table first: a whole table, if a narrow one, early.
crescent -m experiment=paper_05b finetune.seed=0 "$@"
# 2. The volume curve and the vote floor on generation A, with crescent's own point (from the cache).
crescent -m experiment=paper_05b setting=crescent,volume_25,volume_50,floor_3 finetune.seed=0 \
  hydra.sweep.dir=multirun/paper_05b_volume "$@"
# 3. Label precision per floor: the vote audit of the same model, sampled as the study samples.
crescent experiment=vote_audit model=qwen_coder_05b answers.samples=4 \
  hydra.run.dir=multirun/paper_05b_volume/audit "$@"
# 4. The other two replicas of every row (the seed-0 jobs are skipped).
crescent -m experiment=paper_05b "$@"
# 5. MATH-500, a second scoring pass of every fine-tune (from the cache), about 5 minutes each.
crescent -m experiment=paper_05b stages=[finetune,evaluate] eval.tasks=[crescent_math500] \
  eval.limit=null "$@"
# 6. The table, the paired differences, the plots, the compute.
report() {
  crescent-report multirun/paper_05b --against setting=no_vote
  crescent-report multirun/paper_05b_volume     # the volume runs and the audit under it
}
report
# 7. Where time is left: every fine-tune on all 1,319 GSM8K test problems, a scoring pass that
#    replaces the 500-problem column in the same rows (the report keeps the larger one).
crescent -m experiment=paper_05b stages=[finetune,evaluate] eval.tasks=[crescent_gsm8k_cot_zeroshot] \
  eval.limit=null "$@"
report
