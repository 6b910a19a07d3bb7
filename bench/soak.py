#!/usr/bin/env python3
"""Soak: a million short tasks churned through real worker processes with retention on, to show
that the manager's memory, its store and its submit latency stay flat over time.

    python3 bench/soak.py                  # 100 workers, 1,000,000 tasks, --retention 30s
    python3 bench/soak.py --quick          # 20 workers, 100,000 tasks
    python3 bench/soak.py --tasks 300000 --workers 50 --no-build --out /tmp/soak

Builds with `cargo build --release` (unless --no-build); runs $CUBE_BIN, else
$CARGO_TARGET_DIR/release/cube, else target/release/cube. Every process runs in a fresh
temporary directory, loopback only, no tokens; all of them are killed on exit.

Two parts:

1. **Bytes per retained task, measured.** A manager with `--retention 1h` (nothing is collected)
   and the workers: its RSS once every worker is Ready, then after --retained (100,000) tasks
   that exit at once are all Completed. (RSS after - RSS before) / tasks is what the manager
   itself spends on a finished task it keeps, allocator included; the store's in-use bytes per
   task likewise. That manager is then stopped.
2. **The soak.** A fresh manager with `--retention` (30s) and `--retention-count` (default), the
   workers with the same `--retention`. --tasks (1,000,000) tasks that exit at once are submitted
   by --clients processes of --threads keep-alive connections; every --every (2 s) the script
   samples the manager's RSS, its store (in-use bytes, file size: from /health), the tasks it
   holds by state and the tombstones; every request's latency goes into 10-second buckets
   (p50, p99, rate). After the last submission it samples --drain (60 s) more, while retention
   collects.

Writes soak.json (every sample and bucket) and soak.svg (RSS, store and p99 latency over time)
into --out (default: bench/results/), and prints a summary: first vs last third of the run.
"""
import argparse, http.client, json, multiprocessing, os, resource, signal, socket, subprocess, sys
import tempfile, threading, time, uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_scale import ROOT, cleanup, cube_binary, free_ports, get, load, spawn, wait_for  # noqa: E402


def rss_kib(pid):
    """Resident KiB: all of it, and the anonymous part (the heap; the rest is mapped files,
    mostly the store's pages read through its memory map)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out["VmRSS"], out.get("RssAnon", out["VmRSS"])


def health(base):
    h, _ = get(f"{base}/health", timeout=30)
    return h


def start_workers(cube, tmp, logs, env, n, retention):
    ports = free_ports(n)
    for i, p in enumerate(ports):
        spawn(f"w{i}", [cube, "worker", "--runtime", "fake", "--port", str(p), "--name", f"w{i}",
                        "--retention", retention, "--data-dir", os.path.join(tmp, f"w{i}")], logs, env)
    for p in ports:
        wait_for(f"worker on {p}", lambda p=p: get(f"http://127.0.0.1:{p}/health")[0] is not None, 60)
    return ports


def start_manager(cube, tmp, logs, env, name, ports, extra):
    port = free_ports(1)[0]
    p = spawn(name, [cube, "manager", "--port", str(port), "--data-dir", os.path.join(tmp, name),
                     "--workers", ",".join(f"127.0.0.1:{w}" for w in ports), *extra], logs, env)
    base = f"http://127.0.0.1:{port}"

    def ready():
        nodes, _ = get(f"{base}/nodes")
        return sum(1 for n in nodes if n.get("status") == "Ready") == len(ports)

    wait_for("every worker Ready", ready, 120)
    return p, base


def submitter(port, count, threads, queue, record):
    """One client process: `threads` keep-alive connections submitting `count` tasks; each
    request's (end time, latency) when `record`."""
    samples = [[] for _ in range(threads)]
    errors = [0] * threads

    def run(i, n):
        conn = None
        body_of = lambda: json.dumps({"task": {"id": str(uuid.uuid4()), "image": "cube-sim/task",  # noqa: E731
                                               "cmd": ["true"], "restart_policy": "never"}})
        for _ in range(n):
            payload = body_of()
            for attempt in range(5):
                t0 = time.time()
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                        conn.connect()
                        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn.request("POST", "/tasks", payload, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    if r.status in (200, 201):
                        t1 = time.time()
                        if record:
                            samples[i].append((t1, t1 - t0))
                        break
                    errors[i] += 1
                    if r.status < 500 and r.status != 429:
                        break
                except (OSError, http.client.HTTPException):
                    errors[i] += 1
                    if conn:
                        conn.close()
                    conn = None
                time.sleep(0.05 * (attempt + 1))
        if conn:
            conn.close()

    per = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    ts = [threading.Thread(target=run, args=(i, per[i])) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    queue.put({"samples": [s for part in samples for s in part], "errors": sum(errors)})


def submit(port, tasks, clients, threads, record):
    """Start the clients; returns (processes, queue) to collect from with `collect`."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    per = [tasks // clients + (1 if i < tasks % clients else 0) for i in range(clients)]
    procs = [ctx.Process(target=submitter, args=(port, per[i], threads, queue, record), daemon=True)
             for i in range(clients)]
    for p in procs:
        p.start()
    return procs, queue


def collect(procs, queue):
    results = [queue.get(timeout=7200) for _ in procs]
    for p in procs:
        p.join()
    return [s for r in results for s in r["samples"]], sum(r["errors"] for r in results)


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def buckets(samples, t0, width=10.0):
    out = {}
    for t, lat in samples:
        out.setdefault(int((t - t0) // width), []).append(lat)
    rows = []
    for k in sorted(out):
        lats = sorted(out[k])
        rows.append({"t": round(k * width, 1), "rate": round(len(lats) / width, 1),
                     "p50_ms": round(1000 * percentile(lats, 0.5), 2),
                     "p99_ms": round(1000 * percentile(lats, 0.99), 2)})
    return rows


# ---- the graph: three stacked line charts in one SVG, no plotting library needed ----

def chart(x0, y0, w, h, title, series, xmax, unit):
    """series: [(label, colour, [(x, y)])]."""
    ymax = max([y for _, _, pts in series for _, y in pts] + [1e-9]) * 1.1
    parts = [f'<text x="{x0}" y="{y0 - 8}" font-size="13" font-weight="bold">{title}</text>',
             f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for i in range(5):
        v = ymax * i / 4
        y = y0 + h - h * i / 4
        parts.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{v:.3g} {unit}</text>')
    for i in range(6):
        x = x0 + w * i / 5
        parts.append(f'<text x="{x:.1f}" y="{y0 + h + 14}" font-size="10" text-anchor="middle">'
                     f'{xmax * i / 5:.0f} s</text>')
    for k, (label, colour, pts) in enumerate(series):
        if pts:
            path = " ".join(f"{x0 + w * x / xmax:.1f},{y0 + h - h * y / ymax:.1f}" for x, y in pts)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{path}"/>')
        parts.append(f'<text x="{x0 + w - 4}" y="{y0 + 14 + 13 * k}" font-size="11" text-anchor="end" '
                     f'fill="{colour}">{label}</text>')
    return parts


def svg(samples, rows, path, note):
    xmax = max([s["t"] for s in samples] + [r["t"] for r in rows] + [1])
    w, h, left = 640, 150, 80
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + left + 20}" height="{3 * (h + 60) + 30}" '
             f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="18" font-size="12">{note}</text>']
    parts += chart(left, 50, w, h, "manager memory", [
        ("RSS (MiB)", "#1f77b4", [(s["t"], s["rss_mib"]) for s in samples]),
        ("heap (MiB)", "#ff7f0e", [(s["t"], s["heap_mib"]) for s in samples])], xmax, "MiB")
    parts += chart(left, 50 + h + 60, w, h, "manager store", [
        ("file (MiB)", "#d62728", [(s["t"], s["file_mib"]) for s in samples]),
        ("in use (MiB)", "#2ca02c", [(s["t"], s["in_use_mib"]) for s in samples])], xmax, "MiB")
    parts += chart(left, 50 + 2 * (h + 60), w, h, "POST /tasks latency (10 s buckets)", [
        ("p99 (ms)", "#9467bd", [(r["t"], r["p99_ms"]) for r in rows]),
        ("p50 (ms)", "#8c564b", [(r["t"], r["p50_ms"]) for r in rows])], xmax, "ms")
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def retained_cost(cube, tmp, logs, env, ports, n, clients, threads):
    """Part 1: what the manager spends on a finished task it keeps."""
    proc, base = start_manager(cube, tmp, logs, env, "manager-retained", ports, ["--retention", "1h"])
    time.sleep(2)
    before, before_anon = rss_kib(proc.pid)
    store_before = health(base)["store"]["in_use_bytes"]
    procs, queue = submit(int(base.rsplit(":", 1)[1]), n, clients, threads, False)
    _, errors = collect(procs, queue)
    wait_for("every task Completed", lambda: health(base)["states"].get("Completed", 0) >= n, 600)
    time.sleep(2)
    h = health(base)
    after, after_anon = rss_kib(proc.pid)
    out = {"tasks": n, "errors": errors, "rss_before_mib": round(before / 1024, 1),
           "rss_after_mib": round(after / 1024, 1),
           "rss_bytes_per_task": round((after - before) * 1024 / n),
           "heap_bytes_per_task": round((after_anon - before_anon) * 1024 / n),
           "store_bytes_per_task": round((h["store"]["in_use_bytes"] - store_before) / n)}
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--retention", default="30s")
    ap.add_argument("--retained", type=int, default=100_000, help="tasks of part 1")
    ap.add_argument("--quick", action="store_true", help="20 workers, 100,000 tasks, 20,000 retained")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--drain", type=float, default=60.0, help="seconds sampled after the last submission")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory and its logs")
    args = ap.parse_args()
    if args.quick:
        args.workers, args.tasks, args.retained = 20, 100_000, 20_000
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "cube"], cwd=ROOT, check=True)
    cube = cube_binary()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    tmp = tempfile.mkdtemp(prefix="cube-soak-")
    logs = os.path.join(tmp, "logs")
    os.makedirs(logs)
    os.makedirs(args.out, exist_ok=True)
    env = {**os.environ, "RUST_LOG": "warn"}
    env.pop("CUBE_TOKEN", None)
    env.pop("CUBE_CLUSTER_TOKEN", None)
    print(f"soak: {args.workers} workers, {args.tasks} tasks, retention {args.retention} [{load()}], {tmp}",
          flush=True)
    try:
        ports = start_workers(cube, tmp, logs, env, args.workers, args.retention)
        cost = retained_cost(cube, tmp, logs, env, ports, args.retained, args.clients, args.threads)
        print(f"  retained: {cost}", flush=True)

        proc, base = start_manager(cube, tmp, logs, env, "manager", ports, ["--retention", args.retention])
        t0 = time.time()
        procs, queue = submit(int(base.rsplit(":", 1)[1]), args.tasks, args.clients, args.threads, True)
        samples, done_at = [], None

        def sample():
            h = health(base)
            rss, anon = rss_kib(proc.pid)
            s = {"t": round(time.time() - t0, 1), "rss_mib": round(rss / 1024, 1),
                 "heap_mib": round(anon / 1024, 1),
                 "in_use_mib": round(h["store"]["in_use_bytes"] / 2**20, 2),
                 "file_mib": round(h["store"]["file_bytes"] / 2**20, 2),
                 "tasks": h["tasks"], "collected": h["collected"], "states": h["states"]}
            samples.append(s)
            return s

        while True:
            s = sample()
            if len(samples) % 10 == 1:
                print(f"  t={s['t']:7.1f} s RSS {s['rss_mib']:7.1f} MiB store {s['in_use_mib']:7.2f}/"
                      f"{s['file_mib']:7.2f} MiB tasks {s['tasks']:7d} collected {s['collected']:8d} [{load()}]",
                      flush=True)
            # Each client puts its one result when it is through (Linux counts it at once).
            if done_at is None and queue.qsize() >= len(procs):
                done_at = time.time()
            if done_at is not None and time.time() - done_at >= args.drain:
                break
            time.sleep(args.every)
        latencies, errors = collect(procs, queue)
        done_at = max([t for t, _ in latencies] + [t0 + 1])
        rows = buckets(latencies, t0)
        third = max(1, len(rows) // 3)
        lats = sorted(lat for _, lat in latencies)
        busy = [s for s in samples if s["t"] <= (done_at - t0)]
        k = max(1, len(busy) // 3)
        summary = {
            "workers": args.workers, "tasks": args.tasks, "retention": args.retention, "errors": errors,
            "retained_cost": cost,
            "submit_seconds": round(done_at - t0, 1), "rate": round(len(latencies) / (done_at - t0), 1),
            "p50_ms": round(1000 * percentile(lats, 0.5), 2), "p99_ms": round(1000 * percentile(lats, 0.99), 2),
            "p99_ms_first_third": round(sum(r["p99_ms"] for r in rows[:third]) / third, 2),
            "p99_ms_last_third": round(sum(r["p99_ms"] for r in rows[-third:]) / third, 2),
            "rss_mib_first_third_max": max(s["rss_mib"] for s in busy[:k]),
            "rss_mib_last_third_max": max(s["rss_mib"] for s in busy[-k:]),
            "heap_mib_first_third_max": max(s["heap_mib"] for s in busy[:k]),
            "heap_mib_last_third_max": max(s["heap_mib"] for s in busy[-k:]),
            "file_mib_first_third_max": max(s["file_mib"] for s in busy[:k]),
            "file_mib_last_third_max": max(s["file_mib"] for s in busy[-k:]),
            "in_use_mib_end": samples[-1]["in_use_mib"], "tasks_end": samples[-1]["tasks"],
            "collected_end": samples[-1]["collected"], "load": os.getloadavg(),
        }
        with open(os.path.join(args.out, "soak.json"), "w") as f:
            json.dump({"summary": summary, "samples": samples, "latency": rows}, f, indent=1)
        note = (f"{args.tasks:,} tasks through {args.workers} workers, --retention {args.retention}; "
                f"{summary['rate']:,.0f} submissions/s")
        svg(samples, rows, os.path.join(args.out, "soak.svg"), note)
        print(json.dumps(summary, indent=1))
        print(f"wrote {args.out}/soak.json and soak.svg")
    finally:
        cleanup()
        if not args.keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
