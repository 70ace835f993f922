#!/usr/bin/env bash
# Submit a lakehouse job:  ./spark-submit.sh <job> [--env ENV] [--master URL] [job args...]
# Packages lakehouse for --py-files, adds the Delta jars and the env's Spark confs, and submits
# jobs/<job>.py (local[*] unless the env or --master says otherwise).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
usage() { echo "usage: $0 <job> [--env ENV] [--master URL] [job args...]; jobs: $(ls "$ROOT/jobs" | sed 's/\.py$//' | tr '\n' ' ')" >&2; exit 2; }
[ $# -ge 1 ] || usage
JOB="$1"; shift
[ -f "$ROOT/jobs/$JOB.py" ] || { echo "no job '$JOB' in $ROOT/jobs" >&2; usage; }
ENV=local; MASTER=""; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --env) ENV="$2"; shift 2 ;;
    --master) MASTER="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
make -s -C "$ROOT" setup
PY="$ROOT/.venv/bin/python"
mkdir -p "$ROOT/build"
( cd "$ROOT" && rm -f build/lakehouse.zip && "$PY" -m zipfile -c build/lakehouse.zip lakehouse >/dev/null )
mapfile -t SUBMIT_ARGS < <(cd "$ROOT" && "$PY" -m lakehouse.submit "$ENV" $MASTER)
export PYSPARK_PYTHON="$PY" PYSPARK_DRIVER_PYTHON="$PY"
export LAKEHOUSE_CONF_DIR="${LAKEHOUSE_CONF_DIR:-$ROOT/conf}" LAKEHOUSE_JARS_DIR="${LAKEHOUSE_JARS_DIR:-$ROOT/.jars}"
exec "$ROOT/.venv/bin/spark-submit" "${SUBMIT_ARGS[@]}" --name "lakehouse-$JOB" \
  --py-files "$ROOT/build/lakehouse.zip" "$ROOT/jobs/$JOB.py" --env "$ENV" "${ARGS[@]}"
