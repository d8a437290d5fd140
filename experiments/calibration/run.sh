#!/usr/bin/env bash
# The calibration study, step by step; every step resumes, so after an interruption run the same
# command again: finished steps are skipped in seconds (their stages are cache entries).
#   bash experiments/calibration/run.sh logger=none     (extra arguments go to every crescent run)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=multirun/calibration
python experiments/calibration/gold_pairs.py 400 1000 >/dev/null
gold() { echo "finetune.input=$PWD/outputs/calibration/gold_$1.jsonl"; }
# The decision first: the base, then gold 1,000 x 2 epochs (the go/no-go), then the retest
# (the floor), then gold 400 x 2 and 400 x 4 (how the effect grows with steps and epochs). A
# session that ends early has then answered the question the study exists for.
# 0. The base on all 1,319 problems.
crescent experiment=calibration stages=[evaluate] hydra.run.dir=$out/base "$@"
# 1. The positive control's decision.
crescent experiment=calibration "$(gold 1000)" finetune.max_epochs=2 hydra.run.dir=$out/gold_1000x2 "$@"
# 2. The floor: the base again, batched otherwise (engine.batch_size: sequences in flight); the
#    flip rate between the two scorings is the measurement floor.
crescent experiment=calibration stages=[evaluate] engine.batch_size=64 \
  hydra.run.dir=$out/base_retest "$@"
# 3. No-go on LoRA (gold 1,000 x 2: +1.7 points, its interval across zero, 2026-12-06), so the
#    protocol's next step: one full fine-tune of gold 400 x 2 (100 steps). lr 1e-5, the usual
#    full-SFT peak for a 0.5B instruct model (every weight moves: 20x below LoRA's 2e-4), with
#    the LoRA recipe's 5% warm-up and cosine decay to 0.
crescent experiment=calibration "$(gold 400)" finetune=full finetune.lr=1e-5 \
  finetune.max_epochs=2 hydra.run.dir=$out/gold_400x2_full "$@"
# 4. Fewer pairs, then more epochs on them (LoRA).
crescent experiment=calibration "$(gold 400)" finetune.max_epochs=2 hydra.run.dir=$out/gold_400x2 "$@"
crescent experiment=calibration "$(gold 400)" finetune.max_epochs=4 hydra.run.dir=$out/gold_400x4 "$@"
crescent-report $out --contrast gold_1000 base --contrast finetune=full base  # Holm over the family
