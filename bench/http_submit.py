#!/usr/bin/env python3
"""Durable POST /tasks over real HTTP, measured with wrk (Debian's package), then the proof that
every acknowledged submission survives a SIGKILL of the manager.

    cargo build --release && python3 bench/http_submit.py [--connections 64] [--seconds 10] [--security off|token|tls]

1. Starts `cube up --runtime fake --workers 8` (manager over HTTP with in-process workers) on a
   free port, runs wrk for --seconds with 2 threads and --connections connections, each request
   a new task with a client-chosen id, and prints wrk's throughput and latency percentiles.
   `--security off` (the default) runs it `--insecure`; `token` with the API token `cube up`
   makes, presented on every request, to measure what checking it costs; `tls` with the token
   over HTTPS (`cube up --tls`).
2. Runs wrk again and SIGKILLs the manager in the middle of it, restarts it on the same data
   directory, and checks that every id wrk saw acknowledged (2xx) is there.
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, time

from benchlib import CUBE, ROOT, free_port, http, http_all

LUA = os.path.join(ROOT, "bench", "submit.lua")
SECURITY = "off"


def start(port, data):
    home = os.path.join(data, "home")
    os.makedirs(home, exist_ok=True)
    flags = {"off": ["--insecure"], "token": [], "tls": ["--tls"]}[SECURITY]
    p = subprocess.Popen([CUBE, "up", "--runtime", "fake", "--workers", "8", "--port", str(port), "--data-dir", data,
                          *flags],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "RUST_LOG": "warn", "HOME": home})
    token_file = os.path.join(home, ".config", "cube", f"127.0.0.1-{port}.token")
    if SECURITY == "tls":
        os.environ["CUBE_CA_CERT"] = os.path.join(home, ".config", "cube", f"127.0.0.1-{port}.ca.pem")
    for _ in range(400):
        try:
            if SECURITY != "off":
                with open(token_file) as f:
                    os.environ["CUBE_TOKEN"] = f.read().strip()
            if len([n for n in http("GET", f"{base(port)}/nodes") if n["status"] == "Ready"]) == 8:
                return p
        except Exception:
            pass
        time.sleep(0.05)
    p.kill()
    sys.exit("cube up did not come up")


def base(port):
    return f"{'https' if SECURITY == 'tls' else 'http'}://127.0.0.1:{port}"


def wrk(port, seconds, connections, acked_dir):
    return subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
                             "-s", LUA, base(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ACKED_DIR": acked_dir})


def acked_ids(d):
    ids = set()
    for f in os.listdir(d):
        if f.startswith("acked-"):
            with open(os.path.join(d, f)) as fh:
                ids.update(l.strip() for l in fh if l.strip())
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--security", choices=["off", "token", "tls"], default="off")
    args = ap.parse_args()
    global SECURITY
    SECURITY = args.security
    os.environ.pop("CUBE_TOKEN", None)
    os.environ.pop("CUBE_CA_CERT", None)
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk")
    tmp = tempfile.mkdtemp()
    try:
        # 1. Throughput and latency.
        port = free_port()
        cube = start(port, f"{tmp}/run1")
        out = wrk(port, args.seconds, args.connections, tmp + "/run1").communicate()[0]
        cube.kill()
        cube.wait()
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        print(out, file=sys.stderr)
        # 2. SIGKILL in the middle of a run; every acknowledged id must be there afterwards.
        d2 = f"{tmp}/run2"
        os.makedirs(d2)
        port = free_port()
        cube = start(port, d2)
        load = wrk(port, 6, args.connections, d2)
        time.sleep(3)
        cube.send_signal(signal.SIGKILL)
        cube.wait()
        load.communicate()
        acked = acked_ids(d2)
        cube = start(port, d2)
        stored = {t["id"] for t in http_all(f"{base(port)}/tasks")}
        cube.kill()
        cube.wait()
        lost = acked - stored
        print(json.dumps({"security": args.security, "connections": args.connections, "requests_per_s": round(rps),
                          "p50": pct.get("50"), "p90": pct.get("90"), "p99": pct.get("99"),
                          "non_2xx": int(errors.group(1)) if errors else 0,
                          "kill_test_acked": len(acked), "kill_test_stored": len(stored), "lost": len(lost)}))
        if lost:
            sys.exit(f"LOST {len(lost)} acknowledged tasks, e.g. {sorted(lost)[:3]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
