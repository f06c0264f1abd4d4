#!/usr/bin/env bash
# Run a museum-typology job through spark-submit on any master.
#
#   ./spark-submit.sh <job> [--master URL] [--conf FILE] [job options...]
#
# Ships the package as a zip (--py-files) and the chosen settings file (--files), and makes the
# driver and executors run this environment's Python (they must import horovod, petastorm, ...).
# Extra spark-submit options go in SPARK_SUBMIT_ARGS, e.g. SPARK_SUBMIT_ARGS="--deploy-mode client".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${MUSEUM_PYTHON:-$ROOT/.venv/bin/python}"

usage() { echo "usage: $0 <job> [--master URL] [--conf FILE] [job options...]; jobs: $(cd "$ROOT/jobs" && ls *.py | sed 's/\.py$//' | tr '\n' ' ')" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
JOB="$1"; shift
JOB_FILE="$ROOT/jobs/${JOB//-/_}.py"
[[ -f "$JOB_FILE" ]] || { echo "$0: unknown job '$JOB'" >&2; usage; }
[[ -x "$PY" ]] || { echo "$0: no Python at $PY (run 'make setup' or set MUSEUM_PYTHON)" >&2; exit 2; }

MASTER="" ; CONF_FILE="" ; JOB_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) MASTER="$2"; shift 2 ;;
    --master=*) MASTER="${1#*=}"; shift ;;
    --conf) CONF_FILE="$2"; JOB_ARGS+=("--conf" "$2"); shift 2 ;;
    --conf=*) CONF_FILE="${1#*=}"; JOB_ARGS+=("$1"); shift ;;
    *) JOB_ARGS+=("$1"); shift ;;
  esac
done
if [[ -z "$MASTER" ]]; then
  # The conf file's spark.master, else the default settings' (local[*]).
  MASTER="$("$PY" -c 'import sys; from museum_typology.config import load_settings; print(load_settings(sys.argv[1] or None).get("spark.master"))' "$CONF_FILE")"
fi

# The package as a zip, with the default settings inside it (museum_typology/conf/default.toml).
BUILD="$ROOT/build/spark-submit"
rm -rf "$BUILD" && mkdir -p "$BUILD/pkg/museum_typology/conf"
cp -r "$ROOT/lib/museum_typology/." "$BUILD/pkg/museum_typology/"
cp "$ROOT/conf/default.toml" "$BUILD/pkg/museum_typology/conf/"
find "$BUILD/pkg" -name __pycache__ -prune -exec rm -rf {} +
(cd "$BUILD/pkg" && "$PY" -c 'import shutil; shutil.make_archive("../museum_typology", "zip", ".")')

SPARK_SUBMIT="$("$PY" -c 'from pyspark.find_spark_home import _find_spark_home as f; print(f())')/bin/spark-submit"
FILES=()
[[ -n "$CONF_FILE" ]] && FILES=(--files "$CONF_FILE")
export PYSPARK_PYTHON="$PY" PYSPARK_DRIVER_PYTHON="$PY"
# shellcheck disable=SC2086
exec "$SPARK_SUBMIT" \
  --master "$MASTER" \
  --name "museum-typology-$JOB" \
  --conf "spark.pyspark.python=$PY" \
  --conf "spark.pyspark.driver.python=$PY" \
  --py-files "$BUILD/museum_typology.zip" \
  "${FILES[@]}" \
  ${SPARK_SUBMIT_ARGS:-} \
  "$JOB_FILE" "${JOB_ARGS[@]}"
