#!/usr/bin/env bash
# Start the MLflow tracking server (UI + REST API) over the store that splitlab runs log to.
#
# Default: the SQLite store ./mlflow.db that `splitlab analyze|train|sweep` write when no tracking URI is
# set, artifacts under ./mlruns (the same folder runs logged straight to SQLite use), bound to 127.0.0.1.
#   mlflow/start.sh                       # http://127.0.0.1:5000
#   MLFLOW_PORT=5001 mlflow/start.sh
# Production store (see mlflow/docker-compose.yml): PostgreSQL for runs, an S3 bucket for artifacts.
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:mlflow@127.0.0.1:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://mlflow MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:9000 \
#   AWS_ACCESS_KEY_ID=minio AWS_SECRET_ACCESS_KEY=minio-secret mlflow/start.sh
# Runs then log with MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (artifacts go through the server).
set -euo pipefail
cd "$(dirname "$0")/.."
HERE="$(pwd)"
MLFLOW_BIN="${MLFLOW_BIN:-$HERE/.venv/bin/mlflow}"
[ -x "$MLFLOW_BIN" ] || MLFLOW_BIN="$(command -v mlflow)"
exec "$MLFLOW_BIN" server \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-1}" \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$HERE/mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$HERE/mlruns}" \
  "$@"
