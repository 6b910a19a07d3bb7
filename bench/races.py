#!/usr/bin/env python3
"""The lifecycle races of issue 8, measured with real processes and real Docker: how many
containers each one leaves running that should not run, and whether the tasks end as promised.

    cargo build --release && python3 bench/races.py [--pairs 24] [--clients 8] [--rounds 2]

1. POST-then-DELETE burst: --pairs tasks from --clients threads, each POSTed and DELETEd at
   once. Counts containers left running and tasks not Completed.
2. DELETE while the worker is away: the manager restarts, the task's worker is down; DELETE;
   the worker returns. Counts the task's containers left running.
3. A worker dead when the manager restarts: is it Down within the node timeout, and do its
   tasks run elsewhere?
4. Node loss racing the worker's return: the worker is killed and restarted right around the
   node timeout. Counts tasks with more (or fewer) than one running copy.

Every container is labelled with its worker's name and removed at the end.
"""
import argparse, json, os, random, shutil, signal, subprocess, sys, tempfile, threading, time, uuid

from benchlib import CUBE, IMAGE, ensure_image, free_port, http_status, remove_by_label, sh

NODE_TIMEOUT = 2.0


class Proc:
    def __init__(self, args, log):
        self.args, self.log = args, log
        self.start()

    def start(self):
        self.p = subprocess.Popen([CUBE] + self.args, stdout=subprocess.DEVNULL,
                                  stderr=open(self.log, "ab"), stdin=subprocess.DEVNULL,
                                  env={**os.environ, "RUST_LOG": "info"})

    def kill(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()


class Cluster:
    def __init__(self, workers, tmp):
        # A store of its own: a cluster must not recover another race's tasks.
        self.tmp = tempfile.mkdtemp(dir=tmp)
        self.names = [f"race-{uuid.uuid4().hex[:8]}" for _ in range(workers)]
        self.wports = [free_port() for _ in range(workers)]
        self.mport = free_port()
        self.workers = [self.worker(i) for i in range(workers)]
        self.manager = self.start_manager()
        self.wait_ready(workers)

    def worker(self, i):
        return Proc(["worker", "--port", str(self.wports[i]), "--name", self.names[i],
                     "--data-dir", os.path.join(self.tmp, self.names[i])],
                    os.path.join(self.tmp, f"{self.names[i]}.log"))

    def start_manager(self):
        addrs = ",".join(f"127.0.0.1:{p}" for p in self.wports)
        return Proc(["manager", "--port", str(self.mport), "--workers", addrs, "--scheduler", "roundrobin",
                     "--node-timeout", str(NODE_TIMEOUT), "--data-dir", os.path.join(self.tmp, "manager")],
                    os.path.join(self.tmp, "manager.log"))

    def url(self, path):
        return f"http://127.0.0.1:{self.mport}{path}"

    def req(self, method, path, body=None):
        try:
            return http_status(method, self.url(path), body, timeout=30)
        except Exception as e:
            code = getattr(e, "code", None)
            return code, None

    def wait_health(self):
        for _ in range(600):
            if self.req("GET", "/health")[0] == 200:
                return
            time.sleep(0.05)
        sys.exit("the manager did not come up")

    def nodes(self):
        s, n = self.req("GET", "/nodes")
        return n if s == 200 else []

    def wait_ready(self, n):
        self.wait_health()
        for _ in range(600):
            if sum(1 for x in self.nodes() if x["status"] == "Ready") >= n:
                return
            time.sleep(0.05)
        sys.exit("workers did not become Ready")

    def submit(self, tid=None, **extra):
        task = {"image": IMAGE, "cmd": ["sleep", "600"], "stop_timeout_s": 1, **extra}
        if tid:
            task["id"] = tid
        s, t = self.req("POST", "/tasks", {"task": task})
        assert s == 201, (s, t)
        return t["id"]

    def task(self, tid):
        return self.req("GET", f"/tasks/{tid}")[1]

    def wait_state(self, tid, state, patience=30):
        deadline = time.time() + patience
        while time.time() < deadline:
            t = self.task(tid)
            if t and t["state"] == state:
                return t
            time.sleep(0.05)
        return self.task(tid)

    def running_copies(self):
        """task id -> running containers, over every worker of this cluster."""
        copies = {}
        for n in self.names:
            out = sh("docker", "ps", "--filter", f"label=cube.worker={n}",
                     "--format", '{{.Label "cube.task.id"}}').stdout.split()
            for tid in out:
                copies[tid] = copies.get(tid, 0) + 1
        return copies

    def close(self):
        self.manager.kill()
        for w in self.workers:
            w.kill()
        for n in self.names:
            remove_by_label(f"cube.worker={n}")


def settle(seconds):
    time.sleep(seconds)


def race_post_delete(tmp, pairs, clients):
    c = Cluster(2, tmp)
    try:
        ids, lock = [], threading.Lock()
        per = [pairs // clients + (1 if i < pairs % clients else 0) for i in range(clients)]

        def client(n):
            # Each pair: the POST and, a few milliseconds later, the DELETE of the same
            # client-chosen id, as a user who changes their mind at once.
            for _ in range(n):
                tid = str(uuid.uuid4())
                post = threading.Thread(target=c.submit, args=(tid,))
                post.start()
                time.sleep(random.uniform(0.0, 0.03))
                deadline = time.time() + 10
                while True:
                    s, _ = c.req("DELETE", f"/tasks/{tid}")
                    if s == 202 or time.time() > deadline:
                        break
                    time.sleep(0.002)
                post.join()
                assert s == 202, s
                with lock:
                    ids.append(tid)

        threads = [threading.Thread(target=client, args=(n,)) for n in per]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.time() + 30
        while time.time() < deadline:
            if all((c.task(t) or {}).get("state") == "Completed" for t in ids):
                break
            time.sleep(0.2)
        settle(5)
        copies = c.running_copies()
        left = sum(copies.get(t, 0) for t in ids)
        not_completed = sum(1 for t in ids if (c.task(t) or {}).get("state") != "Completed")
        return {"pairs": len(ids), "containers_left_running": left, "tasks_not_completed": not_completed}
    finally:
        c.close()


def race_delete_while_away(tmp):
    c = Cluster(1, tmp)
    try:
        tid = c.submit()
        c.wait_state(tid, "Running")
        c.manager.kill()
        c.workers[0].kill()
        c.manager = c.start_manager()
        c.wait_health()
        s, t = c.req("DELETE", f"/tasks/{tid}")
        c.workers[0] = c.worker(0)
        c.wait_ready(1)
        deadline = time.time() + 20
        while time.time() < deadline and c.running_copies().get(tid, 0) > 0:
            time.sleep(0.2)
        settle(2)
        t = c.task(tid) or {}
        return {"delete_status": s, "containers_left_running": c.running_copies().get(tid, 0),
                "state": t.get("state")}
    finally:
        c.close()


def race_dead_at_manager_start(tmp):
    c = Cluster(2, tmp)
    try:
        tids = [c.submit() for _ in range(4)]
        for t in tids:
            c.wait_state(t, "Running")
        lost = c.task(tids[0])["worker"]
        li = c.names.index(lost)
        on_lost = [t for t in tids if c.task(t)["worker"] == lost]
        c.manager.kill()
        c.workers[li].kill()
        t0 = time.time()
        c.manager = c.start_manager()
        c.wait_health()
        down_after = None
        moved_after = None
        while time.time() - t0 < NODE_TIMEOUT + 15:
            status = {n["name"]: n["status"] for n in c.nodes()}
            if down_after is None and status.get(lost) == "Down":
                down_after = round(time.time() - t0, 2)
            ts = [c.task(t) or {} for t in on_lost]
            if moved_after is None and all(t.get("state") == "Running" and t.get("worker") != lost for t in ts):
                moved_after = round(time.time() - t0, 2)
            if down_after is not None and moved_after is not None:
                break
            time.sleep(0.1)
        return {"node_timeout_s": NODE_TIMEOUT, "status_of_dead_worker": {n["name"]: n["status"] for n in c.nodes()}.get(lost),
                "down_after_s": down_after, "its_tasks_running_elsewhere_after_s": moved_after,
                "tasks_on_it": len(on_lost)}
    finally:
        c.close()


def race_loss_vs_return(tmp, offset):
    c = Cluster(2, tmp)
    try:
        tids = [c.submit() for _ in range(6)]
        for t in tids:
            c.wait_state(t, "Running")
        lost = c.task(tids[0])["worker"]
        li = c.names.index(lost)
        c.workers[li].kill()
        time.sleep(max(0.0, NODE_TIMEOUT + offset))
        c.workers[li] = c.worker(li)
        c.wait_ready(2)
        deadline = time.time() + 30
        while time.time() < deadline:
            copies = c.running_copies()
            if all(copies.get(t, 0) == 1 for t in tids) and all((c.task(t) or {}).get("state") == "Running" for t in tids):
                break
            time.sleep(0.2)
        settle(3)
        copies = c.running_copies()
        return {"restart_at_node_timeout_plus_s": offset,
                "tasks_not_exactly_one_copy": sum(1 for t in tids if copies.get(t, 0) != 1),
                "tasks_not_running": sum(1 for t in tids if (c.task(t) or {}).get("state") != "Running")}
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=["post-delete", "away", "dead", "loss"], default=None)
    args = ap.parse_args()
    ensure_image()
    tmp = tempfile.mkdtemp(prefix="cube-races-")
    try:
        for r in range(args.rounds):
            if args.only in (None, "post-delete"):
                print(json.dumps({"race": "post-then-delete", "round": r + 1, **race_post_delete(tmp, args.pairs, args.clients)}), flush=True)
            if args.only in (None, "away"):
                print(json.dumps({"race": "delete-while-worker-away", "round": r + 1, **race_delete_while_away(tmp)}), flush=True)
            if args.only in (None, "dead"):
                print(json.dumps({"race": "worker-dead-at-manager-start", "round": r + 1, **race_dead_at_manager_start(tmp)}), flush=True)
            if args.only in (None, "loss"):
                for offset in (-0.3, 0.0, 0.3):
                    print(json.dumps({"race": "node-loss-vs-return", "round": r + 1, **race_loss_vs_return(tmp, offset)}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
