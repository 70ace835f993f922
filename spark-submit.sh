#!/usr/bin/env bash
# Submit a lakehouse job:
#   ./spark-submit.sh <job> [--env ENV] [--master URL] [--conf-dir DIR] [job args...]
# Packages lakehouse for --py-files, adds the Delta jars and the env's Spark confs (from DIR, else
# $LAKEHOUSE_CONF_DIR, else conf/), and submits jobs/<job>.py to --master, else the env's master,
# else spark-defaults.conf's ($SPARK_CONF_DIR); an env naming none with none there is refused.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
usage() { echo "usage: $0 <job> [--env ENV] [--master URL] [--conf-dir DIR] [job args...]; jobs: $(ls "$ROOT/jobs" | sed 's/\.py$//' | tr '\n' ' ')" >&2; exit 2; }
[ $# -ge 1 ] || usage
JOB="$1"; shift
[ -f "$ROOT/jobs/$JOB.py" ] || { echo "no job '$JOB' in $ROOT/jobs" >&2; usage; }
ENV=local; MASTER=""; CONF_DIR="${LAKEHOUSE_CONF_DIR:-$ROOT/conf}"; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --env|--master|--conf-dir) [ $# -ge 2 ] || { echo "$1 needs a value" >&2; usage; } ;;
  esac
  case "$1" in
    --env) ENV="$2"; shift 2 ;;
    --env=*) ENV="${1#*=}"; shift ;;
    --master) MASTER="$2"; shift 2 ;;
    --master=*) MASTER="${1#*=}"; shift ;;
    --conf-dir) CONF_DIR="$2"; shift 2 ;;
    --conf-dir=*) CONF_DIR="${1#*=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
# submit.py runs in $ROOT, the job where we are: one absolute folder for both
[[ "$CONF_DIR" = /* ]] || CONF_DIR="$PWD/$CONF_DIR"
# and spark-defaults.conf's folder: submit.py (in $ROOT) and spark-submit (here) read the same
if [ -n "${SPARK_CONF_DIR:-}" ] && [[ "$SPARK_CONF_DIR" != /* ]]; then
  export SPARK_CONF_DIR="$PWD/$SPARK_CONF_DIR"
fi
make -s -C "$ROOT" setup
PY="$ROOT/.venv/bin/python"
# Executors run this checkout's venv, or LAKEHOUSE_WORKER_PYTHON (on several hosts, a Python
# with the same packages at a path every worker has). Not an inherited PYSPARK_PYTHON: images
# set that to a Python without these packages.
export PYSPARK_PYTHON="${LAKEHOUSE_WORKER_PYTHON:-$PY}" PYSPARK_DRIVER_PYTHON="$PY"
# The pinned PySpark's own Spark, which the Delta and Kafka jars are built for: a SPARK_HOME
# naming another install would run that one. A cluster's spark-defaults.conf is still read when
# SPARK_CONF_DIR names its folder.
unset SPARK_HOME
export LAKEHOUSE_CONF_DIR="$CONF_DIR" LAKEHOUSE_JARS_DIR="${LAKEHOUSE_JARS_DIR:-$ROOT/.jars}"
# A command substitution, not mapfile < <(...): a failing process substitution would be ignored
# and spark-submit run without the jars, master and confs. submit.py has said why on stderr.
SUBMIT_OUT="$(cd "$ROOT" && "$PY" -m lakehouse.submit --conf-dir "$CONF_DIR" -- "$ENV" ${MASTER:+"$MASTER"})" || exit
mapfile -t SUBMIT_ARGS <<< "$SUBMIT_OUT"
# The package zipped under a name of its content: an application still running (a continuous
# bronze) serves its --py-files to executors it starts later, so a zip is never rewritten in
# place under it; the same code reuses its zip, new code gets a new one (old ones stay until
# build/ is removed). Written aside and renamed: two submits at once each see a whole zip.
mkdir -p "$ROOT/build"
CODE="$(cd "$ROOT" && find -H lakehouse -type f -not -path '*/__pycache__/*' -print0 \
  | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
PY_FILES="$ROOT/build/lakehouse-$CODE.zip"
if [ ! -f "$PY_FILES" ]; then
  PART="$(mktemp --suffix=.part "$ROOT/build/lakehouse-XXXXXXXX")"
  ( cd "$ROOT" && "$PY" -m zipfile -c "$PART" lakehouse >/dev/null ) || { rm -f "$PART"; exit 1; }
  chmod a+r "$PART"  # mktemp's 0600 would keep the zip from other users of the checkout
  mv -f "$PART" "$PY_FILES"
fi
exec "$ROOT/.venv/bin/spark-submit" "${SUBMIT_ARGS[@]}" --name "lakehouse-$JOB" \
  --py-files "$PY_FILES" "$ROOT/jobs/$JOB.py" --env "$ENV" --conf-dir "$CONF_DIR" \
  "${ARGS[@]}"
