"""Schemathesis hooks for bench/fuzz_api.sh: keep the fuzzer's traffic on this machine and each
request short. Each only changes a value into another one its schema allows just as well, so a
test case stays as valid (or as invalid) as it was generated.

- A join (`POST /nodes`) makes the manager call the address it names, and a generated address
  may name any host. Every `address` the manager could take (`host:port`) and every `port` it
  could take is pointed, before the request is sent, at a loopback port where nothing listens
  ($CUBE_FUZZ_DEAD_PORT): the manager still checks, stores and watches the node, and calls
  only loopback. Values it refuses are sent as they are.
- The worker's change feed may hold a request for up to `wait` seconds; a wait over 1 s is cut
  to 1 s. So may a service's endpoints (`GET /services/{name}/endpoints?index=N`, 60 s without
  `wait`): a `wait` from 2 to 300, or none, is made 1.
- The event stream (`GET /events`) has no end without `wait`: a `wait` over 1 s, or none, is
  made 1.
- A service keeps `replicas` tasks running: `replicas` from 11 to 100000 in the body of
  `POST /services`, `PUT /services/{name}` or `PATCH /services/{name}` is cut to 10, so that
  fuzzed services stay cheap for the two workers.

Every answer is also logged, `METHOD PATH STATUS` a line, to $CUBE_FUZZ_LOG, for the totals
and the checks fuzz_api.sh makes of its own.
"""
import os
import re
import threading

import schemathesis

DEAD_PORT = int(os.environ["CUBE_FUZZ_DEAD_PORT"])
LOG = os.environ["CUBE_FUZZ_LOG"]
_log_lock = threading.Lock()

# What `node::check_address` could accept: host characters, then `:` and a port number.
ADDRESS = re.compile(r"[\[\]A-Za-z0-9.:_-]+:\+?[0-9]+")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


# Most replicas a fuzzed service keeps, and the most the schema allows (more is left as it is,
# for the server to refuse).
MAX_REPLICAS, SCHEMA_MAX_REPLICAS = 10, 100_000
# Longest wait of a fuzzed long-poll, in seconds, and the longest the endpoints' schema allows.
MAX_WAIT, SCHEMA_MAX_ENDPOINTS_WAIT = 1, 300
# The longest the event stream's schema allows.
SCHEMA_MAX_EVENTS_WAIT = 86_400


@schemathesis.hook
def before_call(context, case, kwargs):
    method, path = case.operation.method.upper(), case.operation.path
    if path in ("/services", "/services/{name}") and method in ("POST", "PUT", "PATCH"):
        if isinstance(case.body, dict):
            replicas = case.body.get("replicas")
            if _is_int(replicas) and MAX_REPLICAS < replicas <= SCHEMA_MAX_REPLICAS:
                case.body["replicas"] = MAX_REPLICAS
    if method == "GET" and path == "/services/{name}/endpoints":
        if case.query is None:
            case.query = {}
        if isinstance(case.query, dict):
            wait = case.query.get("wait")
            if wait is None or (_is_int(wait) and MAX_WAIT < wait <= SCHEMA_MAX_ENDPOINTS_WAIT):
                case.query["wait"] = MAX_WAIT
    if method == "GET" and path == "/events":
        if case.query is None:
            case.query = {}
        if isinstance(case.query, dict):
            wait = case.query.get("wait")
            if wait is None or (_is_int(wait) and MAX_WAIT < wait <= SCHEMA_MAX_EVENTS_WAIT):
                case.query["wait"] = MAX_WAIT
    if method == "POST" and path == "/nodes" and isinstance(case.body, dict):
        address = case.body.get("address")
        if isinstance(address, str) and ADDRESS.fullmatch(address):
            case.body["address"] = f"127.0.0.1:{DEAD_PORT}"
        port = case.body.get("port")
        if _is_int(port) and 1 <= port <= 65535:
            case.body["port"] = DEAD_PORT
    if method == "GET" and path == "/tasks" and isinstance(case.query, dict):
        wait = case.query.get("wait")
        if (_is_int(wait) or isinstance(wait, float)) and wait > MAX_WAIT:
            case.query["wait"] = MAX_WAIT


@schemathesis.hook
def after_call(context, case, response):
    line = f"{case.operation.method.upper()} {case.operation.path} {response.status_code}\n"
    with _log_lock, open(LOG, "a") as log:
        log.write(line)
