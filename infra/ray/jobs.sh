#!/usr/bin/env bash
# Submit the affect jobs to a Ray cluster started with `ray up infra/ray/cluster.yaml`, through the dashboard that
# `ray dashboard infra/ray/cluster.yaml` forwards to 127.0.0.1:8265. The token comes from ~/.ray/auth_token (or
# RAY_AUTH_TOKEN); S3 keys are already on the nodes (file_mounts), never passed here.
#
#   infra/ray/jobs.sh tune|train|score|all
#
# The same entrypoints as the RayJobs in infra/kuberay/ (tests/test_infra.py checks that they agree). The affect
# commands can also run here directly with this RAY_ADDRESS: they then submit their Ray work as Ray jobs themselves.
set -euo pipefail

export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE=token

tune() {
  ray job submit --submission-id "affect-tune-$(date +%Y%m%d%H%M%S)" -- \
    affect tune s3://affect/datasets/recola --out s3://affect/runs/recola/tuning \
    --num-samples 20 --max-concurrent 4 --epochs 30 --dimension arousal --feature-set appearance \
    --cpus-per-trial 2 --gpus-per-trial 0.5 --no-progress
}

train() {
  ray job submit --submission-id "affect-train-$(date +%Y%m%d%H%M%S)" -- \
    affect train s3://affect/datasets/recola --out s3://affect/runs/recola/train \
    --config s3://affect/runs/recola/tuning/best_config.yaml --dimension both --model lstm-ekf --align adaptive \
    --seeds 10 --epochs 100 --window-frames 500 --cpus-per-seed 2 --gpus-per-seed 0.5 --no-progress
}

score() {
  ray job submit --submission-id "affect-score-$(date +%Y%m%d%H%M%S)" -- \
    affect score s3://affect/datasets/recola --model s3://affect/runs/recola/train/model \
    --out s3://affect/predictions/recola --gpus-per-actor 0.25 --no-progress
}

case "${1:-}" in
  tune) tune ;;
  train) train ;;
  score) score ;;
  all) tune && train && score ;;
  *) echo "usage: $0 tune|train|score|all" >&2; exit 2 ;;
esac
