#!/usr/bin/env bash
# OpenAPI-driven check of the cloud simulator: schemathesis (from PyPI, in a throw-away
# venv) generates requests from the simulator's own /openapi.json and fails on any server
# error (5xx), undocumented status, wrong content type or response that violates the schema.
#
# Usage: tests/cloud/schemathesis.sh            (builds obdgw with cargo when needed)
# Environment:
#   OBDGW_BIN              obdgw binary to use (default: build, then $CARGO_TARGET_DIR/debug/obdgw)
#   SCHEMATHESIS_VERSION   pinned version (default 4.32.5)
#   ST_MAX_EXAMPLES        test cases per operation and phase (default 40)
#   ST_SEED                random seed (default 1; set empty for a random one)
#   ST_REPORT_DIR          where the JUnit report goes (default: a temporary directory)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
version=${SCHEMATHESIS_VERSION:-4.32.5}
max_examples=${ST_MAX_EXAMPLES:-40}
seed=${ST_SEED-1}
work=$(mktemp -d)
report_dir=${ST_REPORT_DIR:-$work/report}
sim_pid=""

cleanup() {
    if [ -n "$sim_pid" ] && kill -0 "$sim_pid" 2>/dev/null; then
        kill "$sim_pid" 2>/dev/null || true
        wait "$sim_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "schemathesis.sh: $*" >&2
    if [ -s "$work/sim.err" ]; then
        echo "--- simulator log (last 40 lines) ---" >&2
        tail -n 40 "$work/sim.err" >&2
    fi
    exit 1
}

bin=${OBDGW_BIN:-}
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --quiet --bin obdgw) || fail "cargo build failed"
    bin="${CARGO_TARGET_DIR:-$root/target}/debug/obdgw"
fi
[ -x "$bin" ] || fail "no obdgw binary at $bin (set OBDGW_BIN)"

echo "schemathesis.sh: installing schemathesis $version into a throw-away venv" >&2
python3 -m venv "$work/venv" || fail "python3 -m venv failed (install python3-venv)"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" \
    || fail "pip install schemathesis==$version failed"

"$bin" sim cloud --listen 127.0.0.1:0 --token-ttl-s 86400 >"$work/sim.out" 2>"$work/sim.err" &
sim_pid=$!
base=""
for _ in $(seq 1 300); do
    base=$(head -n 1 "$work/sim.out" 2>/dev/null || true)
    [ -n "$base" ] && break
    kill -0 "$sim_pid" 2>/dev/null || fail "the simulator exited before printing its URL"
    sleep 0.1
done
[ -n "$base" ] || fail "the simulator printed no URL within 30 s"
echo "schemathesis.sh: simulator at $base" >&2

# A bearer token for the demo connector (see docs/cloud.md).
token=$("$work/venv/bin/python" - "$base" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(
    sys.argv[1] + "/v1/authenticate/connector",
    data=json.dumps({"connector_uuid": "0b6f1c52-8d3e-4f0a-9c1d-2e7a5b4c3d21", "pincode": "4711"}).encode(),
    headers={"Content-Type": "application/json"},
)
print(json.load(urllib.request.urlopen(req, timeout=10))["access_token"])
PY
) || fail "cannot log in to the simulator"

seed_args=()
[ -n "$seed" ] && seed_args=(--seed "$seed")
set +e
# Run from the scratch directory: schemathesis keeps a cache in the working directory.
cd "$work"
"$work/venv/bin/st" run "$base/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --header "Authorization: Bearer $token" \
    --phases examples,coverage,fuzzing \
    --max-examples "$max_examples" \
    "${seed_args[@]}" \
    --workers 1 \
    --request-timeout 10 \
    --suppress-health-check all \
    --report junit --report-dir "$report_dir" \
    --output-sanitize true
status=$?
set -e
kill -0 "$sim_pid" 2>/dev/null || fail "the simulator died during the run"
if grep -q "panicked" "$work/sim.err"; then
    fail "the simulator panicked"
fi
if [ "$status" -ne 0 ]; then
    fail "schemathesis found problems (exit $status)"
fi
echo "schemathesis.sh: no server errors or schema violations" >&2
