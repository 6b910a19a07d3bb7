#!/usr/bin/env bash
# Fuzz both APIs from the outside with schemathesis, driven by their own /openapi.json.
#
# Starts, on free loopback ports in a temporary directory, a manager with a token file (a read
# and a write token) and two workers on the fake runtime, all sharing a cluster token; then runs
# `schemathesis run` three times, with the checks not_a_server_error, status_code_conformance,
# content_type_conformance, response_schema_conformance and negative_data_rejection:
#   1. the manager, with the write token;
#   2. the manager, with no token: every operation but /health and /openapi.json must answer
#      401 (the document says so), which this script also checks of every answer;
#   3. a worker, with the cluster token.
# Prints the totals of each run and exits non-zero on any failure. Builds nothing: the binary
# is $CUBE_BIN (default target/debug/cube, which `cargo test` builds). Installs schemathesis
# into a venv under ${XDG_CACHE_HOME:-$HOME/.cache}/cube-schemathesis the first time.
#
#   CUBE_BIN=…                   the cube binary
#   CUBE_FUZZ_EXAMPLES=50        test cases per operation and phase (schemathesis --max-examples)
#   CUBE_FUZZ_SEED=…             replay a run: the seed it printed
#
# bench/fuzz_hooks.py keeps the traffic on loopback (a join's address is pointed at a port
# where nothing listens) and bounds the change feed's long-poll.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CUBE_BIN=${CUBE_BIN:-$ROOT/target/debug/cube}
case $CUBE_BIN in /*) ;; *) CUBE_BIN=$PWD/$CUBE_BIN ;; esac
EXAMPLES=${CUBE_FUZZ_EXAMPLES:-50}
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/cube-schemathesis
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection

[ -x "$CUBE_BIN" ] || { echo "fuzz: no cube binary at $CUBE_BIN (cargo build, or set CUBE_BIN)" >&2; exit 2; }

if ! "$VENV/bin/schemathesis" --version >/dev/null 2>&1; then
    echo "fuzz: installing schemathesis into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4.32,<5'
fi
ST=$VENV/bin/schemathesis

DIR=$(mktemp -d "${TMPDIR:-/tmp}/cube-fuzz.XXXXXX")
PIDS=()    # the servers
RUNNING=   # the schemathesis run under way
KEEP=
alive() {
    local pid
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done
    return 1
}
cleanup() {
    local pid _
    [ -z "$RUNNING" ] || kill "$RUNNING" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    # A server finishes its open connections before it exits, for up to 30 s: give it 5.
    for _ in $(seq 50); do
        alive || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$KEEP" ]; then
        echo "fuzz: the servers' logs and the reports are in $DIR"
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports: the manager's, two workers', and one where nothing will listen.
read -r MANAGER_PORT W1_PORT W2_PORT DEAD_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
token() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
READ_TOKEN=$(token)
WRITE_TOKEN=$(token)
CLUSTER_TOKEN=$(token)
printf 'read  %s\nwrite %s\n' "$READ_TOKEN" "$WRITE_TOKEN" >"$DIR/tokens"
chmod 600 "$DIR/tokens"

start() { # name, then the command; output to $DIR/name.log
    local name=$1
    shift
    env -u CUBE_TOKEN CUBE_CLUSTER_TOKEN="$CLUSTER_TOKEN" "$@" >"$DIR/$name.log" 2>&1 &
    PIDS+=("$!")
}
start w1 "$CUBE_BIN" worker --runtime fake --host 127.0.0.1 --port "$W1_PORT" --name w1 --data-dir "$DIR/w1"
start w2 "$CUBE_BIN" worker --runtime fake --host 127.0.0.1 --port "$W2_PORT" --name w2 --data-dir "$DIR/w2"
start manager "$CUBE_BIN" manager --host 127.0.0.1 --port "$MANAGER_PORT" --token-file "$DIR/tokens" \
    --workers "127.0.0.1:$W1_PORT,127.0.0.1:$W2_PORT" --data-dir "$DIR/manager"

# Wait until both workers are Ready at the manager, so that submitted tasks get placed.
if ! python3 - "$MANAGER_PORT" "$WRITE_TOKEN" <<'EOF'; then
import json, sys, time, urllib.request
port, token = sys.argv[1:]
request = urllib.request.Request(f"http://127.0.0.1:{port}/nodes",
                                 headers={"Authorization": f"Bearer {token}"})
deadline = time.time() + 30
while time.time() < deadline:
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            if sum(n["status"] == "Ready" for n in json.load(r)) == 2:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
EOF
    echo "fuzz: the manager and its workers did not come up; their logs:" >&2
    tail -n 20 "$DIR"/*.log >&2
    KEEP=1
    exit 1
fi

export SCHEMATHESIS_HOOKS=$ROOT/bench/fuzz_hooks.py CUBE_FUZZ_DEAD_PORT=$DEAD_PORT
SUMMARY=()
FAILED=0
: >"$DIR/counts"

# run NAME URL [schemathesis options…]: one schemathesis run; its totals go to SUMMARY.
run() {
    local name=$1 url=$2
    shift 2
    local seed=()
    [ -n "${CUBE_FUZZ_SEED:-}" ] && seed=(--seed "$CUBE_FUZZ_SEED")
    echo
    echo "fuzz: ==== $name: $url"
    export CUBE_FUZZ_LOG=$DIR/$name.requests
    : >"$CUBE_FUZZ_LOG"
    local rc=0
    # In the background, so that a signal to this script reaches the trap at once.
    (cd "$DIR" && exec "$ST" run "$url" --checks "$CHECKS" --max-examples "$EXAMPLES" \
        --request-timeout 10 --generation-database none --no-color \
        --report json --report-json-path "$DIR/$name.json" "${seed[@]}" "$@") &
    RUNNING=$!
    wait "$RUNNING" || rc=$?
    RUNNING=
    local line
    line=$(python3 - "$name" "$DIR/$name.json" "$CUBE_FUZZ_LOG" "$rc" "$DIR/counts" <<'EOF'
import json, sys
name, report, requests, rc, counts = sys.argv[1:4] + [int(sys.argv[4]), sys.argv[5]]
try:
    r = json.load(open(report))
except (OSError, ValueError):
    print(f"{name}: no report (schemathesis exited {rc})")
    sys.exit(1)
ops, cases = r["operations"], r["test_cases"]
answers = open(requests).read().split("\n")[:-1]
with open(counts, "a") as f:
    f.write(f"{cases['generated'] - cases['with_failures']} {cases['with_failures']}\n")
print(f"{name}: {ops['tested']}/{ops['selected']} operations, {cases['generated']} test cases, "
      f"{len(answers)} requests, {cases['unique_failures']} failures, {len(r['errors'])} errors"
      f" (seed {r['seed']})")
sys.exit(0 if rc == 0 and r["exit_code"] == 0 and not r["failures"] and not r["errors"] else 1)
EOF
) || FAILED=1
    SUMMARY+=("$line")
}

run manager-write "http://127.0.0.1:$MANAGER_PORT/openapi.json" -H "Authorization: Bearer $WRITE_TOKEN"
run manager-no-token "http://127.0.0.1:$MANAGER_PORT/openapi.json"
# Without a token, every answer but those of the open paths is a 401.
if ! python3 - "$DIR/manager-no-token.requests" <<'EOF'; then
import collections, sys
answers = [line.split() for line in open(sys.argv[1])]
wrong = collections.Counter(f"{m} {p} {s}" for m, p, s in answers
                            if p not in ("/health", "/openapi.json") and s != "401")
for answer, n in wrong.most_common():
    print(f"fuzz: without a token, {answer} answered {n} times (expected 401)")
sys.exit(1 if wrong or not answers else 0)
EOF
    SUMMARY+=("manager-no-token: an operation answered without a token")
    FAILED=1
fi
run worker "http://127.0.0.1:$W1_PORT/openapi.json" -H "Authorization: Bearer $CLUSTER_TOKEN"

# The servers must have lived through it all.
for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "fuzz: a server died during the runs; its logs:" >&2
        tail -n 20 "$DIR"/*.log >&2
        FAILED=1
        break
    fi
done

echo
echo "fuzz: ==== totals"
printf 'fuzz: %s\n' "${SUMMARY[@]}"
[ "$FAILED" -eq 0 ] || KEEP=1
# Test cases over all runs, as test runners close.
awk -v failed="$FAILED" '{ ok += $1; bad += $2 } END {
    if (failed && !bad) bad = 1
    printf "fuzz: %d passed, %d failed\n", ok, bad
}' "$DIR/counts"
exit "$FAILED"
