#!/usr/bin/env bash
# The code study step by step; every step resumes, so after an interruption run the same
# command again. One generation (questions, 4 programs each) serves every arm and replica.
#   bash experiments/code_05b/run.sh logger=none     (extra arguments go to every crescent run)
# Its record (experiments/study_record.py) lies beside this file and is committed as the study
# goes: a session on a new machine restores the generation and the scored runs from it.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=multirun/code_05b
record=experiments/code_05b/record
cache=outputs/cache
for arg in "$@"; do [[ $arg == cache_dir=* ]] && cache=${arg#cache_dir=}; done
python experiments/study_record.py restore $record --cache "$cache"
for replica in 1 2 3; do
  for arm in vote no_vote shuffled; do
    if [ -f $record/runs/$arm/seed$replica/evaluate/DONE ]; then
      echo "code_05b: $arm seed $replica is scored in the record"; continue
    fi
    crescent experiment=code_05b setting=$arm finetune.seed=$replica \
      hydra.run.dir=$out/$arm/seed$replica "$@"
    python experiments/study_record.py save $out $record --cache "$cache"
  done
done
crescent-report $record/runs --contrast setting=vote base --contrast setting=vote setting=no_vote \
  --contrast setting=shuffled base
