#!/usr/bin/env python3
"""A rolling update of a 10-replica service, through Cube and through Docker Swarm mode, on the
same Docker engine: the same change (a new environment variable), the same rollout settings
(one task at a time, stop-first, no delay, each new task watched for failure for MONITOR
seconds, the rollout over once the last one has been), timed from the update request until
every replica runs the new version and the rollout says it is done.

    cargo build --release && python3 bench/service_update.py [--replicas 10] [--rounds 3] [--monitor 5] [--grace 10]

Swarm's defaults are parallelism 1, delay 0, stop-first and a 5 s monitor; Cube's are the same
(`min_healthy_s` 5). The task (`sleep`, which as PID 1 ignores SIGTERM) is killed after --grace
seconds on both (`stop_timeout_s`, `--stop-grace-period`), so with the default of 10 s most of
each step is that wait; `--grace 1` shows the orchestrators' own overhead. Everything made is
removed (containers by label, the Swarm service), and Swarm mode is left again if this script
turned it on.
"""
import argparse, json, shutil, statistics, subprocess, sys, tempfile, time, uuid

from benchlib import CUBE, IMAGE, ensure_image, free_port, http, http_status, remove_by_label, sh

CMD = ["sleep", "3600"]


def cube_round(replicas, monitor, grace):
    tmp = tempfile.mkdtemp()
    names = ["upd-" + uuid.uuid4().hex[:8] for _ in range(2)]
    procs = []
    try:
        ports = [free_port() for _ in names]
        for name, port in zip(names, ports):
            procs.append(subprocess.Popen([CUBE, "worker", "--port", str(port), "--name", name,
                                           "--data-dir", f"{tmp}/{name}"], stderr=subprocess.DEVNULL))
        mport = free_port()
        procs.append(subprocess.Popen([CUBE, "manager", "--port", str(mport), "--data-dir", f"{tmp}/m",
                                       "--workers", ",".join(f"127.0.0.1:{p}" for p in ports)],
                                      stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{mport}"
        while True:
            try:
                if len([x for x in http("GET", url + "/nodes") if x["status"] == "Ready" and x["cpus"] > 0]) == 2:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        spec = {"name": "bench", "replicas": replicas,
                "task": {"image": IMAGE, "cmd": CMD, "stop_timeout_s": grace},
                "update": {"parallelism": 1, "delay_s": 0, "order": "stop-first", "min_healthy_s": monitor}}
        http("POST", url + "/services", spec)
        while http("GET", url + "/services/bench")["running"] < replicas:
            time.sleep(0.05)
        t0 = time.perf_counter()
        http("PATCH", url + "/services/bench", {"task": {"env": ["VERSION=2"]}})
        while True:
            s = http("GET", url + "/services/bench")
            if s["rollout"]["state"] == "completed" and s["running_current"] == replicas:
                return time.perf_counter() - t0
            time.sleep(0.05)
    finally:
        for p in procs:
            p.kill()
        for name in names:
            remove_by_label(f"cube.worker={name}")
        shutil.rmtree(tmp, ignore_errors=True)


def swarm_round(replicas, monitor, grace):
    name = "cube-upd-" + uuid.uuid4().hex[:8]
    try:
        sh("docker", "service", "create", "--detach", "--no-resolve-image", "--name", name,
           "--replicas", str(replicas), "--stop-grace-period", f"{grace}s",
           "--update-parallelism", "1", "--update-delay", "0s", "--update-order", "stop-first",
           "--update-monitor", f"{monitor}s", IMAGE, *CMD)
        while True:
            running = sh("docker", "service", "ps", name, "--filter", "desired-state=running",
                         "--format", "{{.CurrentState}}").stdout.split("\n")
            if sum(1 for s in running if s.startswith("Running")) >= replicas:
                break
            time.sleep(0.1)
        t0 = time.perf_counter()
        sh("docker", "service", "update", "--detach", "--no-resolve-image", "--env-add", "VERSION=2", name)
        while True:
            state = sh("docker", "service", "inspect", name, "--format",
                       "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}").stdout.strip()
            if state == "completed":
                return time.perf_counter() - t0
            if state in ("paused", "rollback_completed"):
                raise RuntimeError(f"swarm's update ended {state}")
            time.sleep(0.05)
    finally:
        sh("docker", "service", "rm", name, check=False)
        for _ in range(200):
            if not sh("docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}").stdout.strip():
                break
            time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--monitor", type=int, default=5, help="seconds each new task is watched (min_healthy_s, --update-monitor)")
    ap.add_argument("--grace", type=int, default=10, help="seconds a stopped task has before it is killed")
    args = ap.parse_args()
    ensure_image()
    results = {"cube": [], "swarm": []}
    joined = False
    state = sh("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    try:
        if state != "active":
            sh("docker", "swarm", "init", "--advertise-addr", "127.0.0.1")
            joined = True
        for r in range(args.rounds):
            results["cube"].append(cube_round(args.replicas, args.monitor, args.grace))
            results["swarm"].append(swarm_round(args.replicas, args.monitor, args.grace))
            print(f"round {r + 1}: cube {results['cube'][-1]:.2f} s, swarm {results['swarm'][-1]:.2f} s", file=sys.stderr)
    finally:
        if joined:
            sh("docker", "swarm", "leave", "--force", check=False)
    out = {k: round(statistics.median(v), 2) for k, v in results.items()}
    out["all"] = {k: [round(x, 2) for x in v] for k, v in results.items()}
    out["replicas"] = args.replicas
    out["monitor_s"] = args.monitor
    out["grace_s"] = args.grace
    out["cube_vs_swarm"] = round(out["cube"] / out["swarm"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
