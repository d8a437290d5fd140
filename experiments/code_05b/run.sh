#!/usr/bin/env bash
# The code study step by step; every step resumes, so after an interruption run the same
# command again. One generation (questions, 4 programs each) serves every arm and replica.
#   bash experiments/code_05b/run.sh logger=none     (extra arguments go to every crescent run)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=multirun/code_05b
for replica in 1 2 3; do
  for arm in vote no_vote shuffled; do
    crescent experiment=code_05b setting=$arm finetune.seed=$replica \
      hydra.run.dir=$out/$arm/seed$replica "$@"
  done
done
crescent-report $out --contrast setting=vote base --contrast setting=vote setting=no_vote \
  --contrast setting=shuffled base
