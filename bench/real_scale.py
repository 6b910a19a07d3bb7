#!/usr/bin/env python3
"""Real processes at scale: one `cube manager` and N `cube worker --runtime fake` processes on
loopback, T tasks submitted over HTTP until all are Running, then the cluster left idle.

    python3 bench/real_scale.py                       # 200 workers, 100,000 tasks
    python3 bench/real_scale.py --quick               # 20 workers, 5,000 tasks
    python3 bench/real_scale.py --workers 50 --tasks 20000 --idle-seconds 20 --no-build
    python3 bench/real_scale.py --cpu-hogs 6 --stop-all --timeout 180   # under contention

Builds with `cargo build --release` (unless --no-build) and runs $CUBE_BIN, else
$CARGO_TARGET_DIR/release/cube, else target/release/cube. Everything runs in a fresh temporary
directory (each worker its own port and store, the manager its own store, no tokens) that is
removed afterwards (--keep keeps it, with every process's log).

Phases, each with its wall time, the manager's CPU seconds (utime + stime from /proc/PID/stat),
its resident memory (VmRSS at the end of the phase, VmHWM the peak so far) and the workers'
CPU seconds summed:

1. workers: N worker processes started until every one answers /health;
2. ready: the manager started (`--workers` naming them all) until /nodes shows all Ready;
3. submit: T `POST /tasks` (client-chosen ids) from --clients processes of --threads keep-alive
   connections each, --pipeline requests in flight on each (HTTP/1.1 pipelining: Python's
   http.client alone tops out near 1,400 requests/s here); the manager places and starts tasks
   meanwhile, so this phase measures the API and the start path under that load;
4. running: from the last acknowledged submission until every task is Running. Polled without
   listing the tasks: `GET /tasks?state=Pending&limit=1` and `state=Scheduled` until both are
   empty and /health counts T, with back-off (0.1 s doubling to 1 s); then one paged listing of
   `state=Running` checks that exactly T run;
5. idle: once every task runs and at least --settle (60 s) after all were Ready, --idle-seconds
   (30) with nothing to do: the manager's CPU %, the workers' CPU %, and the traffic between the
   manager and the workers, from the kernel's per-connection counters (`ss -ti`, sampled every
   second): data segments the manager sent to workers (≈ requests: each heartbeat, long-poll or
   call is one small write) and bytes each way, per worker per second. New connections in the
   window are counted too (connection churn). The window is the manager's resync interval
   (30 s), so each worker's periodic full report (every task it runs) is counted once; it
   starts after each worker's first one (30-60 s after it was Ready);
6. stop (with --stop-all): every task DELETEd as they were submitted, until all are Completed.

For phases 3-4 and 6 the same TCP counters give the requests (data segments) and bytes the
manager exchanged with the workers per task, and the connections it opened. --cpu-hogs N runs N
busy loops through phases 3, 4 and 6: the load of a machine shared with other work, made the
same on every run (this machine's other users are not).

With the default log level (info, as shipped) the manager's log is read at the end: how many
placements it made (one per attempt; more than the tasks means tasks moved) and how many times
it found a node Down. --profile prints the manager's CPU seconds per thread at each phase.

The load average (`uptime`) is printed with the figures: on a shared machine they are noisy.
Every process started is in a process group of its own and is killed by its id on exit, also
on Ctrl-C or an exception.
"""
import argparse, collections, http.client, json, multiprocessing, os, re, resource, shutil, signal, socket, subprocess, sys
import tempfile, threading, time, urllib.request, uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCS = []  # every process this script started: (name, Popen)


def cube_binary():
    if os.environ.get("CUBE_BIN"):
        return os.environ["CUBE_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "cube")


def load():
    return "load %.2f %.2f %.2f" % os.getloadavg()


def free_ports(n):
    """n distinct free loopback ports (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read()), r.headers


def spawn(name, cmd, log_dir, env=None):
    log = open(os.path.join(log_dir, f"{name}.log"), "wb")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         env=env, start_new_session=True)
    log.close()
    PROCS.append((name, p))
    return p


def cleanup():
    """SIGTERM every process group this script made, then SIGKILL what is left."""
    live = [(n, p) for n, p in PROCS if p.poll() is None]
    for _, p in live:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 5
    for _, p in live:
        try:
            p.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    PROCS.clear()


# ---- /proc ----

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15; fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def threads_cpu(pid):
    """CPU seconds per thread, named `comm#k` (k-th thread of that name, in the order they were
    made). In the manager: cube (main), cube-store-writ (the store writer), actix-rt|system#1
    (Manager and Scheduler), #2 (WorkerProxies), #3 and on (HTTP)."""
    out, seen = {}, {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            seen[name] = seen.get(name, 0) + 1
            out[f"{name}#{seen[name]}" if name.startswith("actix") else name] = cpu_seconds(f"{pid}/task/{tid}")
        except OSError:
            pass
    return out


class Meter:
    """CPU and memory of the manager and the workers' CPU, read at each phase's end."""

    def __init__(self, manager_pid, worker_pids):
        self.manager, self.workers = manager_pid, worker_pids
        self.last = self.read()
        self.phases = []

    def read(self):
        w = 0.0
        for pid in self.workers:
            try:
                w += cpu_seconds(pid)
            except OSError:
                pass
        return time.perf_counter(), cpu_seconds(self.manager), w

    def phase(self, name, **extra):
        now = self.read()
        mem = memory_kib(self.manager)
        wall = now[0] - self.last[0]
        row = {"phase": name, "seconds": round(wall, 2),
               "manager_cpu_s": round(now[1] - self.last[1], 2),
               "manager_cpu_pct": round(100 * (now[1] - self.last[1]) / wall, 1) if wall > 0 else 0,
               "manager_rss_mib": round(mem["VmRSS"] / 1024, 1), "manager_peak_rss_mib": round(mem["VmHWM"] / 1024, 1),
               "workers_cpu_s": round(now[2] - self.last[2], 2), "load": [round(x, 2) for x in os.getloadavg()], **extra}
        self.phases.append(row)
        self.last = now
        print(f"  {name:8} {row['seconds']:8.2f} s  manager {row['manager_cpu_s']:7.2f} CPU s "
              f"({row['manager_cpu_pct']:5.1f} %), RSS {row['manager_rss_mib']:7.1f} MiB "
              f"(peak {row['manager_peak_rss_mib']:7.1f}), workers {row['workers_cpu_s']:7.2f} CPU s  "
              + " ".join(f"{k}={v}" for k, v in extra.items()) + f"  [{load()}]", flush=True)
        return row


# ---- traffic between the manager and the workers, from the kernel's TCP counters ----

COUNTERS = re.compile(r"\b(bytes_acked|bytes_received|data_segs_out|data_segs_in):(\d+)")


def connections(worker_ports):
    """Established connections to a worker port (the manager's side of them): key → counters."""
    out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True).stdout
    conns, key = {}, None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            parts = line.split()
            # Recv-Q Send-Q Local:Port Peer:Port (state column is left out with a state filter)
            local, peer = parts[2], parts[3]
            key = (local, peer) if int(peer.rsplit(":", 1)[1]) in worker_ports else None
            if key:
                conns[key] = {}
        elif key:
            conns[key].update({k: int(v) for k, v in COUNTERS.findall(line)})
    return conns


class Traffic:
    """What the connections to the workers carried while it ran: sampled every second in a
    thread of its own; a connection seen first after the start counts from zero, and one that
    closed counts up to its last sample."""

    FIELDS = ("data_segs_out", "data_segs_in", "bytes_acked", "bytes_received")

    def __init__(self, worker_ports):
        self.ports = worker_ports
        self.first = connections(worker_ports)
        self.last = dict(self.first)
        self.t0 = time.perf_counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.wait(1.0):
            self.last.update(connections(self.ports))

    def stop(self):
        """(seconds, sums of the counters, connections opened meanwhile, connections open now)"""
        self.stopping.set()
        self.thread.join()
        now = connections(self.ports)
        self.last.update(now)
        wall = time.perf_counter() - self.t0
        sums = dict.fromkeys(self.FIELDS, 0)
        for k, v in self.last.items():
            base = self.first.get(k, {})
            for f in sums:
                sums[f] += v.get(f, 0) - base.get(f, 0)
        return wall, sums, len(set(self.last) - set(self.first)), len(now)


# ---- submission ----

def submitter(port, ids, threads, depth, body, queue):
    """One client process: `threads` keep-alive connections submitting the tasks `ids` (with
    `body` None: stopping them, DELETE /tasks/ID), each with up to `depth` requests pipelined
    (HTTP/1.1 answers them in order). Every task has a client-chosen id, so a request re-sent
    after a broken connection is idempotent."""
    done = [0] * threads
    errors = [0] * threads
    first, last = [None] * threads, [None] * threads
    prefix = json.dumps(body["task"])[1:-1] if body else None

    def request(tid):
        if prefix is None:
            return f"DELETE /tasks/{tid} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        payload = f'{{"task":{{"id":"{tid}",{prefix}}}}}'.encode()
        return (f"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload

    def run(i, mine):
        todo = collections.deque(mine)
        sent = collections.deque()
        sock = reader = None
        failures = 0
        while todo or sent:
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    reader = sock.makefile("rb")
                out = []
                while todo and len(sent) < depth:
                    tid = todo.popleft()
                    sent.append(tid)
                    out.append(request(tid))
                if out:
                    sock.sendall(b"".join(out))
                status = int(reader.readline().split()[1])
                length, close = 0, False
                while True:
                    line = reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                reader.read(length)
                tid = sent.popleft()
                if status in (200, 201, 202):
                    now = time.time()
                    first[i] = first[i] or now
                    last[i] = now
                    done[i] += 1
                else:
                    errors[i] += 1
                    if status >= 500:
                        todo.append(tid)
                if close:
                    raise ConnectionError("the server closed the connection")
            except (OSError, ValueError, IndexError):
                errors[i] += 1
                failures += 1
                todo.extendleft(reversed(sent))  # not answered: send again, same ids
                sent.clear()
                if sock:
                    sock.close()
                sock = None
                if failures > 100:
                    break
                time.sleep(0.05)
        if sock:
            sock.close()

    ts = [threading.Thread(target=run, args=(i, ids[i::threads])) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    queue.put({"done": sum(done), "errors": sum(errors), "cpu": time.process_time(),
               "first": min([f for f in first if f] or [0]), "last": max([l for l in last if l] or [0])})


def submit(port, ids, clients, threads, depth, body):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=submitter, args=(port, ids[i::clients], threads, depth, body, queue), daemon=True)
             for i in range(clients)]
    t0 = time.time()
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=3600) for _ in procs]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    first = min(r["first"] for r in results if r["first"]) if any(r["first"] for r in results) else t0
    last = max(r["last"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    return sum(r["done"] for r in results), sum(r["errors"] for r in results), first, last, cpu


# ---- waiting for Running ----

def any_in(base, state):
    tasks, _ = get(f"{base}/tasks?state={state}&limit=1")
    return bool(tasks)


def count_running(base):
    n, url = 0, f"{base}/tasks?state=Running&limit=5000"
    while url:
        tasks, headers = get(url, timeout=120)
        n += len(tasks)
        link = headers.get("Link", "")
        target = link.split(">", 1)[0].lstrip("<") if 'rel="next"' in link else ""
        url = base + target if target.startswith("/") else None
    return n


def wait_for(what, pred, timeout, step=0.1, max_step=1.0):
    t0 = time.perf_counter()
    while True:
        try:
            if pred():
                return time.perf_counter() - t0
        except (OSError, ValueError, http.client.HTTPException):
            pass
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(step)
        step = min(step * 2, max_step)


def tail(path, lines=20):
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            text = f.read().decode(errors="replace")
        print(f"--- last lines of {path}:\n" + "\n".join(text.splitlines()[-lines:]), file=sys.stderr)
    except OSError:
        pass


def log_counts(path):
    """What the manager's log says happened: placements (one per attempt) and nodes found Down."""
    counts = {"placements": 0, "nodes_down": 0}
    with open(path, "rb") as f:
        for line in f:
            if b"Scheduled on" in line:
                counts["placements"] += 1
            elif b"is Down: silent" in line:
                counts["nodes_down"] += 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=200)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="20 workers, 5,000 tasks")
    ap.add_argument("--idle-seconds", type=float, default=30,
                    help="the idle window; 30 s, the manager's resync interval, counts each node's full report once")
    ap.add_argument("--settle", type=float, default=60,
                    help="the idle window starts at least this long after all Ready: every node's first periodic "
                         "full report comes 30-60 s after it is Ready, so by 60 s the reports are in their cycle")
    ap.add_argument("--clients", type=int, default=2, help="client processes submitting")
    ap.add_argument("--threads", type=int, default=8, help="keep-alive connections per client")
    ap.add_argument("--pipeline", type=int, default=16, help="requests in flight per connection")
    ap.add_argument("--cpu", type=float, default=0.004, help="cores each task reserves")
    ap.add_argument("--memory", type=int, default=4 << 20, help="bytes each task reserves")
    ap.add_argument("--log-level", default="info", help="RUST_LOG of every process (info: as shipped)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for all Running")
    ap.add_argument("--profile", action="store_true", help="print the manager's CPU per thread at each phase")
    ap.add_argument("--stop-all", action="store_true",
                    help="after the idle window, DELETE every task as fast as they were submitted and "
                         "wait until all are Completed")
    ap.add_argument("--cpu-hogs", type=int, default=0,
                    help="busy-loop processes running through the submit and running phases (and "
                         "the stop phase): the machine shared with other work, the same every run")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory and its logs")
    args = ap.parse_args()
    if args.quick:
        args.workers, args.tasks = 20, 5000

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "cube"], cwd=ROOT, check=True)
    cube = cube_binary()
    if not os.path.exists(cube):
        sys.exit(f"no binary at {cube}: build it, or set CUBE_BIN")
    # 200 workers' connections, the submitters' and the manager's: raise the soft limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 16 * args.workers + 4096)) if hard != resource.RLIM_INFINITY else max(soft, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    tmp = tempfile.mkdtemp(prefix="cube-real-scale-")
    logs = os.path.join(tmp, "logs")
    os.makedirs(logs)
    env = {**os.environ, "RUST_LOG": args.log_level}
    env.pop("CUBE_TOKEN", None)
    env.pop("CUBE_CLUSTER_TOKEN", None)
    failed = False
    print(f"real_scale: {args.workers} workers, {args.tasks} tasks, {args.cpu_hogs} CPU hogs, {cube} [{load()}], {tmp}",
          flush=True)
    try:
        t_start = time.perf_counter()
        wports = free_ports(args.workers)
        workers = [spawn(f"w{i}", [cube, "worker", "--runtime", "fake", "--port", str(p), "--name", f"w{i}",
                                   "--data-dir", os.path.join(tmp, f"w{i}")], logs, env)
                   for i, p in enumerate(wports)]
        pending = set(wports)

        def all_answer():
            for p in list(pending):
                try:
                    get(f"http://127.0.0.1:{p}/health", timeout=5)
                    pending.discard(p)
                except OSError:
                    pass
            dead = [n for n, p in PROCS if p.poll() is not None]
            if dead:
                raise SystemExit(f"worker(s) exited: {dead[:5]}; see its log")
            return not pending

        wait_for("workers answer", all_answer, 300)
        t_workers = time.perf_counter() - t_start
        print(f"  workers  {t_workers:8.2f} s  {args.workers} started, all answer /health  [{load()}]", flush=True)

        mport = free_ports(1)[0]
        base = f"http://127.0.0.1:{mport}"
        manager = spawn("manager", [cube, "manager", "--port", str(mport), "--data-dir", os.path.join(tmp, "manager"),
                                    "--workers", ",".join(f"127.0.0.1:{p}" for p in wports)], logs, env)
        meter = Meter(manager.pid, [w.pid for w in workers])

        def profile(label):
            if args.profile:
                top = sorted(threads_cpu(manager.pid).items(), key=lambda kv: -kv[1])[:8]
                print(f"    threads at {label}: " + ", ".join(f"{n} {s:.2f}" for n, s in top), flush=True)

        def all_ready():
            if manager.poll() is not None:
                raise SystemExit("the manager exited; see its log")
            nodes, _ = get(f"{base}/nodes")
            return len(nodes) == args.workers and all(n["status"] == "Ready" and n["cpus"] > 0 for n in nodes)

        wait_for("all Ready", all_ready, 300, step=0.05, max_step=0.2)
        t_ready = time.perf_counter()
        meter.phase("ready")
        profile("ready")

        def start_hogs():
            return [spawn(f"hog{i}", [sys.executable, "-c", "while True: pass"], logs) for i in range(args.cpu_hogs)]

        def stop_hogs(hogs):
            for h in hogs:
                os.killpg(h.pid, signal.SIGKILL)
                h.wait()

        hogs = start_hogs()
        body = {"task": {"image": "cube-bench/idle:1", "cmd": ["serve"], "cpu": args.cpu, "memory": args.memory}}
        ids = [str(uuid.uuid4()) for _ in range(args.tasks)]
        t_submit = time.time()
        watch = Traffic(set(wports))
        done, errors, first, last, client_cpu = submit(mport, ids, args.clients, args.threads, args.pipeline, body)
        if done != args.tasks:
            raise SystemExit(f"only {done} of {args.tasks} submissions acknowledged ({errors} errors)")
        rate = done / max(last - first, 1e-9)
        # The phase ends at the last acknowledgement, not when the client processes are reaped.
        meter.phase("submit", tasks_per_s=round(rate), errors=errors, connections=args.clients * args.threads, in_flight=args.clients * args.threads * args.pipeline,
                    client_cpu_s=round(client_cpu, 2))
        overshoot = time.time() - last
        profile("submit")

        def all_running():
            if manager.poll() is not None:
                raise SystemExit("the manager exited; see its log")
            health, _ = get(f"{base}/health")
            return (health["tasks"] == args.tasks and not any_in(base, "Pending")
                    and not any_in(base, "Scheduled"))

        next_progress = [time.perf_counter() + 30]

        def all_running_or_progress():
            if time.perf_counter() > next_progress[0]:
                next_progress[0] += 30
                nodes, _ = get(f"{base}/nodes")
                print(f"    ... {sum(n['status'] == 'Ready' for n in nodes)} nodes Ready, "
                      f"{sum(n['tasks'] for n in nodes)} tasks booked  [{load()}]", flush=True)
            return all_running()

        try:
            waited = wait_for("all Running", all_running_or_progress, args.timeout)
        except TimeoutError:
            meter.phase("running", timed_out=True)
            raise SystemExit(f"not all Running {args.timeout:.0f} s after the last submission")
        wall, sums, new_conns, conns_after = watch.stop()
        calls = {"requests_per_task": round(sums["data_segs_out"] / args.tasks, 2),
                 "kib_per_task": [round(sums["bytes_acked"] / 1024 / args.tasks, 2),
                                  round(sums["bytes_received"] / 1024 / args.tasks, 2)],
                 "connections_opened": new_conns}
        meter.phase("running", since_last_submit_s=round(waited + overshoot, 2), **calls)
        profile("running")
        stop_hogs(hogs)
        total = time.perf_counter() - t_start
        running = count_running(base)
        failed_any = any_in(base, "Failed")
        print(f"  check: {running} Running of {args.tasks}, Failed: {'some' if failed_any else 'none'}; "
              f"submit to all Running {time.time() - t_submit:.2f} s; total (workers started to all Running) "
              f"{total:.2f} s", flush=True)
        if running != args.tasks:
            raise SystemExit(f"{running} Running, expected {args.tasks}")

        # Let the check's listing pass, and the periodic full reports come into their cycle.
        time.sleep(max(2.0, args.settle - (time.perf_counter() - t_ready)))
        meter.phase("settle")
        conns_before = len(connections(set(wports)))
        watch = Traffic(set(wports))
        time.sleep(args.idle_seconds)
        wall, sums, new_conns, conns_after = watch.stop()
        per = lambda v: round(v / wall / args.workers, 2)
        idle = meter.phase("idle", requests_per_worker_s=per(sums["data_segs_out"]),
                           kib_to_workers_per_worker_s=round(sums["bytes_acked"] / 1024 / wall / args.workers, 2),
                           kib_from_workers_per_worker_s=round(sums["bytes_received"] / 1024 / wall / args.workers, 2),
                           new_connections=new_conns, connections=conns_after)
        profile("idle")
        stop = {}
        if args.stop_all:
            down_before = log_counts(os.path.join(logs, "manager.log"))["nodes_down"] if args.log_level == "info" else 0
            hogs = start_hogs()
            t0 = time.time()
            watch = Traffic(set(wports))
            stopped, stop_errors, stop_first, stop_last, _ = submit(mport, ids, args.clients, args.threads,
                                                                    args.pipeline, None)
            if stopped != args.tasks:
                raise SystemExit(f"only {stopped} of {args.tasks} stops acknowledged ({stop_errors} errors)")

            def all_completed():
                return not any(any_in(base, s) for s in ("Running", "Scheduled", "Pending"))

            try:
                wait_for("all Completed", all_completed, args.timeout)
            except TimeoutError:
                meter.phase("stop", timed_out=True)
                raise SystemExit(f"not all Completed {args.timeout:.0f} s after the last stop")
            down = (log_counts(os.path.join(logs, "manager.log"))["nodes_down"] - down_before
                    if args.log_level == "info" else None)
            stop_hogs(hogs)
            _, stop_sums, stop_conns, _ = watch.stop()
            stop = {"stops_per_s": round(stopped / max(stop_last - stop_first, 1e-9)),
                    "requests_per_stop": round(stop_sums["data_segs_out"] / args.tasks, 2),
                    "stop_connections_opened": stop_conns,
                    "last_stop_to_all_completed_s": round(time.time() - stop_last, 2),
                    "stop_total_s": round(time.time() - t0, 2), "nodes_down_while_stopping": down}
            meter.phase("stop", **stop)
            profile("stop")
        counts = log_counts(os.path.join(logs, "manager.log")) if args.log_level == "info" else {}
        if counts:
            print(f"  manager log: {counts['placements']} placements for {args.tasks} tasks, "
                  f"{counts['nodes_down']} times a node was found Down", flush=True)
        summary = {
            "workers": args.workers, "tasks": args.tasks, "workers_up_s": round(t_workers, 2),
            "ready_s": meter.phases[0]["seconds"], "submit_s": round(last - first, 2), "submit_per_s": round(rate),
            "last_submit_to_all_running_s": round(waited + overshoot, 2), "total_s": round(total, 2),
            "manager_cpu_s": {p["phase"]: p["manager_cpu_s"] for p in meter.phases},
            "manager_peak_rss_mib": meter.phases[-1]["manager_peak_rss_mib"],
            "manager_rss_mib": meter.phases[-1]["manager_rss_mib"],
            "idle_manager_cpu_pct": idle["manager_cpu_pct"],
            "idle_workers_cpu_pct": round(100 * idle["workers_cpu_s"] / idle["seconds"], 1),
            "idle_requests_per_worker_s": idle["requests_per_worker_s"],
            "idle_kib_per_worker_s": [idle["kib_to_workers_per_worker_s"], idle["kib_from_workers_per_worker_s"]],
            "connections": [conns_before, conns_after], "idle_new_connections": new_conns,
            "submit_to_running_traffic": calls, **counts, **stop, "cpu_hogs": args.cpu_hogs, "load": [round(x, 2) for x in os.getloadavg()],
        }
        print(json.dumps(summary), flush=True)
    except BaseException:
        failed = True
        raise
    finally:
        cleanup()
        if failed:
            tail(os.path.join(logs, "manager.log"))
            try:
                print(f"manager log: {log_counts(os.path.join(logs, 'manager.log'))}", file=sys.stderr)
            except OSError:
                pass
        if args.keep:
            print(f"logs and stores kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
