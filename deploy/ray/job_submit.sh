#!/usr/bin/env bash
# Submit one wsrl_dist run to a running Ray cluster through its job API, and follow its log.
#   deploy/ray/job_submit.sh [CONFIG.yaml ...] [key.sub=value ...]
# The arguments are `wsrl-dist launch`'s (default: configs/runtime/cluster.yaml, the 14-worker
# GPU-learner layout); run from the repo root: --working-dir . ships this checkout to the cluster.
#   ray dashboard deploy/ray/cluster.yaml &     # (cluster launcher) forwards 8265 to 127.0.0.1
#   deploy/ray/job_submit.sh configs/runtime/cluster.yaml task.name=hopper-medium-v2
# RAY_ADDRESS: the cluster's dashboard (default http://127.0.0.1:8265); set it for a KubeRay
# port-forward or a `ray start --head --dashboard-port=...` of your own.
# Results: the run dir is printed at start (`run dir: ...`); it lives under run.storage on the head
# node ($WSRL_DIST_STORAGE, forwarded to the job when set, else ~/wsrl_dist/runs), never in Ray's
# temporary copy of the working dir. Follow-up commands: wsrl-dist status / scale --workers N.
# The driver runs on the head node; its exporter listens on 127.0.0.1:9464 there, which is what
# deploy/prometheus/prometheus.yml scrapes when Prometheus runs on the head node.
set -euo pipefail

export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
# Ray >= 2.52 clusters enable token auth by default, but the job CLI only sends the token when
# RAY_AUTH_MODE=token ("no authentication token was found ... RAY_AUTH_MODE is currently
# 'disabled'"): use the token when one is there and the user has not chosen a mode.
if [[ -z "${RAY_AUTH_MODE:-}" ]] && { [[ -n "${RAY_AUTH_TOKEN:-}" ]] || [[ -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]]; }; then
  export RAY_AUTH_MODE=token
fi

args=("$@")
if [[ ${#args[@]} -eq 0 ]]; then
  args=(configs/runtime/cluster.yaml)
fi
env_vars="\"PYTHONUNBUFFERED\": \"1\""
if [[ -n "${WSRL_DIST_STORAGE:-}" ]]; then
  env_vars+=", \"WSRL_DIST_STORAGE\": \"${WSRL_DIST_STORAGE}\""
fi

ray job submit \
  --working-dir . \
  --runtime-env-json "{\"excludes\": [\".git\", \".venv\", \"runs\", \"**/__pycache__\"], \"env_vars\": {${env_vars}}}" \
  -- wsrl-dist launch runtime.address=auto runtime.metrics_port=9464 "${args[@]}"
