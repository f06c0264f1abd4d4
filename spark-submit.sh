#!/usr/bin/env bash
# Run a museum-typology job through spark-submit on any master.
#
#   ./spark-submit.sh <job> [--master URL] [--conf FILE] [job options...]
#
# Ships the package as a zip (--py-files) and the chosen settings file (--files), and makes the
# driver and executors run this environment's Python (they must import horovod, petastorm, ...).
# The master and the driver's memory come from the settings (--conf FILE, --set) unless given.
# Extra spark-submit options go in SPARK_SUBMIT_ARGS, split as a shell would split them (quotes
# keep a value with spaces whole), e.g. SPARK_SUBMIT_ARGS="--deploy-mode client".
# MUSEUM_PYTHON: the Python here (driver side; default .venv/bin/python); MUSEUM_EXECUTOR_PYTHON:
# the same environment's Python on the workers, when it lives at another path there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${MUSEUM_PYTHON:-$ROOT/.venv/bin/python}"
EXECUTOR_PY="${MUSEUM_EXECUTOR_PYTHON:-$PY}"

list_jobs() { (cd "$ROOT/jobs" && ls -- *.py) | sed "s/\.py$//" | paste -sd " " -; }
usage() { echo "usage: $0 <job> [--master URL] [--conf FILE] [job options...]; jobs: $(list_jobs)" >&2; exit 2; }
die() { echo "$0: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
JOB="$1"; shift
case "$JOB" in -h|--help) usage ;; esac
# Only names of files in jobs/ (no paths: "../x" must not run some other script).
[[ "$JOB" =~ ^[A-Za-z][A-Za-z0-9_-]*$ && -f "$ROOT/jobs/${JOB//-/_}.py" ]] || die "unknown job '$JOB' (jobs: $(list_jobs))"
JOB_FILE="$ROOT/jobs/${JOB//-/_}.py"
[[ -x "$PY" ]] || die "no Python at $PY (run 'make setup' or set MUSEUM_PYTHON)"

MASTER="" ; CONF_FILE="" ; JOB_ARGS=() ; SETS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --master) [[ $# -ge 2 ]] || die "--master needs a URL"; MASTER="$2"; shift 2 ;;
    --master=*) MASTER="${1#*=}"; shift ;;
    --conf) [[ $# -ge 2 && -n "$2" ]] || die "--conf needs a file"; CONF_FILE="$2"; JOB_ARGS+=("--conf" "$2"); shift 2 ;;
    --conf=*) CONF_FILE="${1#*=}"; [[ -n "$CONF_FILE" ]] || die "--conf needs a file"; JOB_ARGS+=("$1"); shift ;;
    --set) [[ $# -ge 2 ]] || die "--set needs KEY=VALUE"; SETS+=("$2"); JOB_ARGS+=("--set" "$2"); shift 2 ;;
    --set=*) SETS+=("${1#*=}"); JOB_ARGS+=("$1"); shift ;;
    *) JOB_ARGS+=("$1"); shift ;;
  esac
done
# The settings file is shipped with --files; the driver finds it by its path or, where spark-submit
# put it in the driver's working directory (cluster deploy mode), by its base name.
# spark-submit's own --conf takes key=value; here --conf is the job's settings file.
if [[ -n "$CONF_FILE" && ! -f "$CONF_FILE" && "$CONF_FILE" == *=* ]]; then
  die "--conf $CONF_FILE: no such file; --conf names a settings file (TOML) here; pass a Spark setting as --set 'spark.conf.\"${CONF_FILE%%=*}\"=${CONF_FILE#*=}' or SPARK_SUBMIT_ARGS=\"--conf $CONF_FILE\""
fi
[[ -z "$CONF_FILE" || -f "$CONF_FILE" ]] || die "--conf $CONF_FILE: no such file"
# spark-submit's --files is a comma-separated list: a comma in the name would split it.
[[ "$CONF_FILE" != *,* ]] || die "--conf $CONF_FILE: a settings file whose path holds a comma cannot be shipped with --files; rename or copy it"
# From the resolved settings (defaults <- --conf FILE <- --set): spark.master (unless --master was
# given) and the driver's memory, which spark-submit fixes before the job's code runs; then
# SPARK_SUBMIT_ARGS as a list, split with shell quoting rules.
RESOLVED=()
while IFS= read -r line; do RESOLVED+=("$line"); done < <("$PY" -c '
import shlex, sys
from museum_typology.config import ConfigError, load_settings, packaged_defaults
try:
    settings = load_settings(sys.argv[1] or None, sys.argv[4:])
except ConfigError as exc:
    sys.exit(f"{sys.argv[2]}: error: {exc}")
try:
    extra = shlex.split(sys.argv[3])
except ValueError as exc:
    sys.exit(f"{sys.argv[2]}: error: SPARK_SUBMIT_ARGS: {exc}")
if any("\n" in value for value in extra):
    sys.exit(f"{sys.argv[2]}: error: SPARK_SUBMIT_ARGS: a value holds a line break")
print(settings.get("spark.master"))
# Only a value from --conf FILE or --set: the packaged default must not beat a cluster
# spark-defaults.conf (as in session.spark_conf_to_set).
memory = (settings.get("spark.conf") or {}).get("spark.driver.memory", "")
packaged = packaged_defaults().get("spark", {}).get("conf", {}).get("spark.driver.memory", "")
print(memory if memory != packaged else "")
print(packaged)
# spark-submit keeps only the last --py-files and --files, and one value per --conf key: the
# ones given in SPARK_SUBMIT_ARGS are merged with those of this script (the package zip, the
# settings file, PYTHONPATH on the executors) rather than passed on to replace them.
merged = {"--py-files": [], "--files": [], "PYTHONPATH": []}
cluster = False
read = ("--py-files", "--files", "--conf", "--deploy-mode")
flags = ("--verbose", "-v", "--supervise", "--help", "-h", "--version")  # the options without a value
rest, i = [], 0
while i < len(extra):
    token = extra[i]
    option, value = token.split("=", 1) if token.startswith("--") and "=" in token else (token, None)
    if option not in read:
        # passed on as written, with its value ("--driver-java-options --add-opens=x=y" stays whole)
        takes_next = token.startswith("-") and "=" not in token and token not in flags and i + 1 < len(extra)
        rest += extra[i : i + 2] if takes_next else [token]
        i += 2 if takes_next else 1
        continue
    if value is None:
        if i + 1 == len(extra):
            sys.exit(f"{sys.argv[2]}: error: SPARK_SUBMIT_ARGS: {option} needs a value")
        value, i = extra[i + 1], i + 1
    i += 1
    if option in ("--py-files", "--files"):
        merged[option].append(value)
    elif option == "--conf" and value.startswith("spark.executorEnv.PYTHONPATH="):
        merged["PYTHONPATH"].append(value.split("=", 1)[1])
    else:
        cluster = cluster or (option == "--deploy-mode" and value == "cluster") or (option == "--conf" and value.replace(" ", "") == "spark.submit.deployMode=cluster")
        rest += [option, value]
print(",".join(merged["--py-files"]))
print(",".join(merged["--files"]))
print(":".join(merged["PYTHONPATH"]))
print("cluster" if cluster else "")
for value in rest:
    print(value)
' "$CONF_FILE" "$0" "${SPARK_SUBMIT_ARGS:-}" ${SETS[@]+"${SETS[@]}"})
[[ ${#RESOLVED[@]} -ge 7 ]] || exit 2
[[ -n "$MASTER" ]] || MASTER="${RESOLVED[0]}"
DRIVER=()
if [[ -n "${RESOLVED[1]}" ]]; then
  DRIVER=(--driver-memory "${RESOLVED[1]}")
elif [[ "$MASTER" == local* && -n "${RESOLVED[2]}" && -z "${SPARK_DRIVER_MEMORY:-}" ]]; then
  # A local master runs the executors inside the driver and has no cluster defaults to defer
  # to: the packaged memory, as the in-process CLI gets (spark-submit's own default is 1g).
  # SPARK_DRIVER_MEMORY, which --driver-memory would beat, is left to speak.
  DRIVER=(--driver-memory "${RESOLVED[2]}")
fi
USER_PY_FILES="${RESOLVED[3]}" USER_FILES="${RESOLVED[4]}" USER_PYTHONPATH="${RESOLVED[5]}" DEPLOY_MODE="${RESOLVED[6]}"
EXTRA=("${RESOLVED[@]:7}")

# The package as a zip, with the default settings inside it (museum_typology/conf/default.toml).
# One build directory per run: a concurrent run must not replace the zip this driver reads.
mkdir -p "$ROOT/build"
BUILD="$(mktemp -d "$ROOT/build/spark-submit.XXXXXX")"
trap 'rm -rf "$BUILD"' EXIT
mkdir -p "$BUILD/pkg/museum_typology/conf"
cp -r "$ROOT/lib/museum_typology/." "$BUILD/pkg/museum_typology/"
cp "$ROOT/conf/default.toml" "$BUILD/pkg/museum_typology/conf/"
find "$BUILD/pkg" -name __pycache__ -prune -exec rm -rf {} +
(cd "$BUILD/pkg" && "$PY" -c 'import shutil; shutil.make_archive("../museum_typology", "zip", ".")')

SPARK_SUBMIT="$("$PY" -c 'from pyspark.find_spark_home import _find_spark_home as f; print(f())')/bin/spark-submit"
FILES=()
SHIPPED="$CONF_FILE${CONF_FILE:+${USER_FILES:+,}}$USER_FILES"
[[ -n "$SHIPPED" ]] && FILES=(--files "$SHIPPED")
# In cluster deploy mode the driver runs on a worker: the workers' Python.
DRIVER_PY="$PY"
[[ "$DEPLOY_MODE" == cluster ]] && DRIVER_PY="$EXECUTOR_PY"
export PYSPARK_PYTHON="$EXECUTOR_PY" PYSPARK_DRIVER_PYTHON="$DRIVER_PY"
# PYTHONPATH on the executors: the Horovod ranks of train-image are processes that Horovod starts
# with the Python worker's environment, where --py-files is on sys.path but not on PYTHONPATH;
# without this they imported an installed copy of the package, or failed. The zip is in the
# executor's working directory (where spark-submit ships --py-files), also the ranks'.
# Not exec: the EXIT trap removes the build directory once spark-submit is done with it.
"$SPARK_SUBMIT" \
  --master "$MASTER" \
  --name "museum-typology-$JOB" \
  ${DRIVER[@]+"${DRIVER[@]}"} \
  --conf "spark.pyspark.python=$EXECUTOR_PY" \
  --conf "spark.pyspark.driver.python=$DRIVER_PY" \
  --conf "spark.executorEnv.PYTHONPATH=museum_typology.zip${USER_PYTHONPATH:+:$USER_PYTHONPATH}" \
  --py-files "$BUILD/museum_typology.zip${USER_PY_FILES:+,$USER_PY_FILES}" \
  ${FILES[@]+"${FILES[@]}"} \
  ${EXTRA[@]+"${EXTRA[@]}"} \
  "$JOB_FILE" ${JOB_ARGS[@]+"${JOB_ARGS[@]}"} && status=0 || status=$?
exit "$status"
