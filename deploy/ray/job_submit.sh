#!/usr/bin/env bash
# Submit one wsrl_dist run to a running Ray cluster through its job API.
# Run from the repo root; --working-dir . ships this checkout to the cluster.
#   ray dashboard deploy/ray/cluster.yaml &   # (cluster launcher) forwards 8265 to 127.0.0.1
#   deploy/ray/job_submit.sh                  # extra arguments are appended to the launch command
# RAY_ADDRESS defaults to the forwarded dashboard; override it for a KubeRay port-forward etc.
# The driver runs on the head node; its exporter listens on 127.0.0.1:9464 there, which is what
# deploy/prometheus/prometheus.yml scrapes when Prometheus runs on the head node.
set -euo pipefail

export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
CONFIG="${CONFIG:-configs/wsrl.yaml}"

ray job submit \
  --working-dir . \
  --runtime-env-json '{"excludes": [".git", ".venv", "runs", "**/__pycache__"], "env_vars": {"PYTHONUNBUFFERED": "1"}}' \
  -- wsrl-dist launch "${CONFIG}" \
  --set task.name=hopper-medium-v2 \
  --set run.seed=0 \
  --set runtime.address=auto \
  --set runtime.num_workers=14 \
  --set runtime.num_shards=2 \
  --set runtime.metrics_port=9464 \
  "$@"
