#!/usr/bin/env python3
"""Median time from submission to Running for one container at a time, through cube, next to
`docker run -d` of the same image on the same engine.

    cargo build --release && python3 bench/start_latency.py [--n 20] [--via worker|manager]

Starts its own `cube worker` (and `cube manager` with --via manager) on free ports with data in a
temporary directory, and removes every container it made. Through the worker, "Running" is seen
on the worker's change feed (a long-poll that answers on the change); through the manager, by
polling GET /tasks/{id} every 2 ms.
"""
import argparse, json, shutil, statistics, subprocess, sys, tempfile, time, uuid

from benchlib import CUBE, IMAGE, ensure_image, free_port, http







def wait_up(url):
    for _ in range(300):
        try:
            http("GET", url + "/health")
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"{url} did not come up")




def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--via", choices=["worker", "manager"], default="worker")
    args = ap.parse_args()
    ensure_image()
    tmp = tempfile.mkdtemp()
    name = "bench-" + uuid.uuid4().hex[:8]
    procs = []
    try:
        wport = free_port()
        procs.append(subprocess.Popen([CUBE, "worker", "--port", str(wport), "--name", name, "--data-dir", f"{tmp}/w"],
                                      stderr=subprocess.DEVNULL))
        worker = f"http://127.0.0.1:{wport}"
        wait_up(worker)
        target = worker
        if args.via == "manager":
            mport = free_port()
            procs.append(subprocess.Popen([CUBE, "manager", "--port", str(mport), "--workers", f"127.0.0.1:{wport}",
                                           "--data-dir", f"{tmp}/m"], stderr=subprocess.DEVNULL))
            target = f"http://127.0.0.1:{mport}"
            wait_up(target)
            while not any(n["status"] == "Ready" and n["cpus"] > 0 for n in http("GET", target + "/nodes")):
                time.sleep(0.05)
        # Alternate the two, so both see the same engine (and the same number of containers).
        cube_times, docker_times = [], []
        for _ in range(args.n):
            feed = http("GET", worker + "/tasks?since=0")
            seq, instance = feed["seq"], feed["instance"]
            t0 = time.perf_counter()
            task = http("POST", target + "/tasks", {"task": {"image": IMAGE, "cmd": ["sleep", "600"], "stop_timeout_s": 0}})
            tid = task["id"]
            while True:
                if args.via == "worker":
                    feed = http("GET", f"{worker}/tasks?since={seq}&instance={instance}&wait=30")
                    seq = feed["seq"]
                    if any(t["id"] == tid and t["state"] == "Running" for t in feed["tasks"]):
                        break
                else:
                    if http("GET", f"{target}/tasks/{tid}")["state"] == "Running":
                        break
                    time.sleep(0.002)
            cube_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(["docker", "run", "-d", "--label", f"cube.bench={name}", IMAGE, "sleep", "600"],
                           check=True, capture_output=True)
            docker_times.append(time.perf_counter() - t0)
        med_c, med_d = statistics.median(cube_times), statistics.median(docker_times)
        print(json.dumps({"via": args.via, "n": args.n,
                          "cube_median_ms": round(med_c * 1000, 1), "docker_run_median_ms": round(med_d * 1000, 1),
                          "cube_p90_ms": round(sorted(cube_times)[int(0.9 * (args.n - 1))] * 1000, 1),
                          "overhead_ms": round((med_c - med_d) * 1000, 1)}))
    finally:
        for p in procs:
            p.kill()
        for label in (f"cube.worker={name}", f"cube.bench={name}"):
            ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
