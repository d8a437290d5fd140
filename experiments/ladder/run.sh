#!/usr/bin/env bash
# Study 2 step by step; every step resumes, so after an interruption run the same command again.
# Start it only after Study 1 says go (experiments/calibration/README.md).
#   bash experiments/ladder/run.sh logger=none     (extra arguments go to every crescent run)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=multirun/ladder
for replica in 1 2; do
  for arm in gold rft vote no_vote own_questions; do
    crescent experiment=ladder setting=$arm finetune.seed=$replica \
      hydra.run.dir=$out/$arm/seed$replica "$@"
  done
done
# Volume curves: gold, vote and crescent at about 100 pairs and at all their pool gives
# (finetune.max_examples=null), one replica each.
for volume in 100 null; do
  for arm in gold vote own_questions; do
    crescent experiment=ladder setting=$arm finetune.max_examples=$volume finetune.seed=1 \
      hydra.run.dir=$out/volume/${arm}_$volume "$@"
  done
done
crescent-report $out --contrast setting=gold base --contrast setting=rft base \
  --contrast setting=own_questions base --contrast setting=vote setting=no_vote \
  --contrast setting=vote setting=rft --contrast setting=own_questions setting=vote
