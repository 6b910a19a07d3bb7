#!/usr/bin/env python3
"""Recovery times, with real processes: manager restart with N tasks in its store, and node-loss
detection and rescheduling.

    cargo build --release && python3 bench/recovery.py [--tasks 10000] [--node-timeout 5]

Workers are `cube worker --runtime fake` processes (the manager and its store are real; what is
measured is Cube's own recovery, not Docker's start time).

    python3 bench/recovery.py --simulated 1000000

instead fills a store with N Running tasks through the simulation (`examples/simulate`, N/100
in-process workers; much faster than N HTTP submissions), then starts a real `cube manager` on
it, warm (the file is in the page cache, as after a crash) and measures the time until /health
answers 200, until the first page of GET /tasks, and the manager's peak RSS. Its workers were
in-process, so nothing reconnects: what is measured is the restart alone.
1. Submits --tasks tasks, waits until all run, SIGKILLs the manager and restarts it: time until
   /health answers 200 and until GET /tasks lists every task.
2. Kills (SIGKILL) the worker holding a task: time until /nodes shows it Down, and until every
   task of it runs on another worker.
"""
import argparse, concurrent.futures, json, os, shutil, signal, subprocess, sys, tempfile, time

from benchlib import CUBE, free_port, http, http_all, http_status







def wait(pred, timeout=120, step=0.005):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if pred():
                return time.perf_counter() - t0
        except Exception:
            pass
        time.sleep(step)
    sys.exit("timed out")


def restart_simulated(n, runs):
    sim = os.path.join(os.path.dirname(CUBE), "examples", "simulate")
    tmp = tempfile.mkdtemp()
    try:
        store = os.path.join(tmp, "store")
        print(f"filling a store with {n:,} tasks through {sim}", file=sys.stderr)
        subprocess.run([sim, "--workers", str(max(1, n // 100)), "--tasks", str(n), "--data-dir", store],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        size = os.path.getsize(os.path.join(store, "data.mdb"))
        for run in range(runs):
            data = os.path.join(tmp, f"run{run}")
            shutil.copytree(store, data)
            os.remove(os.path.join(data, "cube.lock"))
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            t0 = time.perf_counter()
            p = subprocess.Popen([CUBE, "manager", "--port", str(port), "--data-dir", data], stderr=subprocess.DEVNULL)
            try:
                wait(lambda: http_status("GET", url + "/health")[0] == 200, step=0.002)
                health_s = time.perf_counter() - t0
                http("GET", url + "/tasks?limit=1")
                page_s = time.perf_counter() - t0
                vitals = http("GET", url + "/health")
                with open(f"/proc/{p.pid}/status") as f:
                    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
                print(json.dumps({"tasks_in_store": sum(vitals.get("states", {}).values()), "store_bytes": size,
                                  "health_s": round(health_s, 3), "first_page_s": round(page_s, 3),
                                  "peak_rss_mib": round(hwm / 1024)}))
            finally:
                p.kill()
                p.wait()
                shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--node-timeout", type=float, default=5)
    ap.add_argument("--simulated", type=int, metavar="N", help="restart a manager on a simulated store of N tasks")
    ap.add_argument("--runs", type=int, default=3, help="restarts measured with --simulated")
    args = ap.parse_args()
    if args.simulated:
        return restart_simulated(args.simulated, args.runs)
    tmp = tempfile.mkdtemp()
    procs = {}
    try:
        wports = [free_port() for _ in range(3)]
        for i, p in enumerate(wports):
            procs[f"w{i}"] = subprocess.Popen([CUBE, "worker", "--runtime", "fake", "--port", str(p), "--name", f"rw{i}",
                                               "--data-dir", f"{tmp}/w{i}"], stderr=subprocess.DEVNULL)
        mport = free_port()
        mcmd = [CUBE, "manager", "--port", str(mport), "--data-dir", f"{tmp}/m", "--node-timeout", str(args.node_timeout),
                "--workers", ",".join(f"127.0.0.1:{p}" for p in wports)]
        procs["m"] = subprocess.Popen(mcmd, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{mport}"
        wait(lambda: len([n for n in http("GET", url + "/nodes") if n["status"] == "Ready" and n["cpus"] > 0]) == 3)
        body = {"task": {"image": "cube-sim/task:latest", "cmd": ["sleep", "3600"]}}
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: http("POST", url + "/tasks", body), range(args.tasks)))
        wait(lambda: len(http_all(url + "/tasks?state=Running")) == args.tasks, timeout=300, step=0.2)

        procs["m"].send_signal(signal.SIGKILL)
        procs["m"].wait()
        t0 = time.perf_counter()
        procs["m"] = subprocess.Popen(mcmd, stderr=subprocess.DEVNULL)
        wait(lambda: http_status("GET", url + "/health")[0] == 200, step=0.001)
        health_s = time.perf_counter() - t0
        wait(lambda: len(http_all(url + "/tasks")) == args.tasks, step=0.001)
        listed_s = time.perf_counter() - t0
        wait(lambda: len(http_all(url + "/tasks?state=Running")) == args.tasks, step=0.01)
        running_s = time.perf_counter() - t0

        tasks = http("GET", url + "/tasks?state=Running")
        victim = tasks[0]["worker"]
        lost = {t["id"] for t in tasks if t["worker"] == victim}
        idx = int(victim[2:])
        procs[f"w{idx}"].send_signal(signal.SIGKILL)
        t0 = time.perf_counter()
        wait(lambda: any(n["name"] == victim and n["status"] == "Down" for n in http("GET", url + "/nodes")), step=0.01)
        down_s = time.perf_counter() - t0

        def moved():
            now = {t["id"]: t for t in http("GET", url + "/tasks?state=Running")}
            return all(i in now and now[i]["worker"] != victim for i in lost)
        wait(moved, step=0.05)
        moved_s = time.perf_counter() - t0
        print(json.dumps({"tasks": args.tasks, "manager_restart_health_s": round(health_s, 3),
                          "manager_restart_all_listed_s": round(listed_s, 3),
                          "manager_restart_all_running_s": round(running_s, 3),
                          "node_timeout_s": args.node_timeout, "node_down_detected_s": round(down_s, 2),
                          "lost_tasks": len(lost), "lost_tasks_running_elsewhere_s": round(moved_s, 2)}))
    finally:
        for p in procs.values():
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
