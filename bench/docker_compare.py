#!/usr/bin/env python3
"""40 containers to Running three ways on the same Docker engine: through Cube with two
workers, with 40 `docker run -d` from 8 parallel clients, and with Docker Swarm mode
(`docker swarm init`, `docker service create --replicas 40`).

    cargo build --release && python3 bench/docker_compare.py [--n 40] [--rounds 3]

Each way starts from no containers and ends when all N run; the median over --rounds is
reported. Everything made is removed: containers by label, the service, and swarm mode is left
again if this script turned it on.
"""
import argparse, concurrent.futures, json, shutil, statistics, subprocess, sys, tempfile, time, uuid

from benchlib import CUBE, IMAGE, ensure_image, free_port, http, http_all, remove_by_label, sh













def cube_round(n):
    tmp = tempfile.mkdtemp()
    names = ["cmp-" + uuid.uuid4().hex[:8] for _ in range(2)]
    procs = []
    try:
        ports = [free_port() for _ in names]
        for name, port in zip(names, ports):
            procs.append(subprocess.Popen([CUBE, "worker", "--port", str(port), "--name", name, "--data-dir", f"{tmp}/{name}"],
                                          stderr=subprocess.DEVNULL))
        mport = free_port()
        procs.append(subprocess.Popen([CUBE, "manager", "--port", str(mport), "--data-dir", f"{tmp}/m",
                                       "--workers", ",".join(f"127.0.0.1:{p}" for p in ports)], stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{mport}"
        while True:
            try:
                if len([x for x in http("GET", url + "/nodes") if x["status"] == "Ready" and x["cpus"] > 0]) == 2:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: http("POST", url + "/tasks", {"task": {"image": IMAGE, "cmd": ["sleep", "600"], "stop_timeout_s": 0}}), range(n)))
        while len(http_all(url + "/tasks?state=Running")) < n:
            time.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.kill()
        for name in names:
            remove_by_label(f"cube.worker={name}")
        shutil.rmtree(tmp, ignore_errors=True)


def docker_run_round(n):
    label = "cube.bench=" + uuid.uuid4().hex[:8]
    try:
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: sh("docker", "run", "-d", "--label", label, IMAGE, "sleep", "600"), range(n)))
        return time.perf_counter() - t0
    finally:
        remove_by_label(label)


def swarm_round(n):
    name = "cube-bench-" + uuid.uuid4().hex[:8]
    try:
        t0 = time.perf_counter()
        sh("docker", "service", "create", "--detach", "--no-resolve-image", "--name", name, "--replicas", str(n),
           IMAGE, "sleep", "600")
        while True:
            running = sh("docker", "service", "ps", name, "--filter", "desired-state=running",
                         "--format", "{{.CurrentState}}").stdout.split("\n")
            if sum(1 for s in running if s.startswith("Running")) >= n:
                break
            time.sleep(0.1)
        return time.perf_counter() - t0
    finally:
        sh("docker", "service", "rm", name, check=False)
        for _ in range(100):
            if not sh("docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}").stdout.strip():
                break
            time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ensure_image()
    results = {"cube_2_workers": [], "docker_run_8_clients": [], "swarm": []}
    joined = False
    state = sh("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    try:
        if state != "active":
            sh("docker", "swarm", "init", "--advertise-addr", "127.0.0.1")
            joined = True
        for r in range(args.rounds):
            results["cube_2_workers"].append(cube_round(args.n))
            results["docker_run_8_clients"].append(docker_run_round(args.n))
            results["swarm"].append(swarm_round(args.n))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()), file=sys.stderr)
    finally:
        if joined:
            sh("docker", "swarm", "leave", "--force", check=False)
    med = {k: round(statistics.median(v), 2) for k, v in results.items()}
    med["cube_vs_docker_run"] = round(med["cube_2_workers"] / med["docker_run_8_clients"], 2)
    med["cube_vs_swarm"] = round(med["cube_2_workers"] / med["swarm"], 2)
    med["n"] = args.n
    print(json.dumps(med))


if __name__ == "__main__":
    main()
