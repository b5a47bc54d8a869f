#!/usr/bin/env python3
"""Benchmarks of `fspl daemon` (rows D1-D3 of bench/run).

    daemon.py latency --fspl BIN --work DIR --count N --mean-ms M --stamp STAMP
                      --out JSON
        D1: a daemon watches one queue; N jobs are written into it by
        `fspl queue-write`, one at a time at random intervals (uniform,
        0 .. 2*M ms, fixed seed); the job's command is STAMP (bench/stamp.c),
        which records the wall clock at its start. Latency of a job = its
        command's start - the exit of the queue-write that delivered it.

    daemon.py idle --fspl BIN --work DIR --queues N --seconds S --out JSON
        D2: a daemon watches N empty queues; after it is ready and has
        settled, its CPU time (utime + stime of every thread, from
        /proc/PID/stat) over S seconds and its RSS (VmRSS, and the peak
        VmHWM) are recorded.

    daemon.py drain --fspl BIN --queue Q --count N
        D3 (a hyperfine command): start a daemon on queue Q, which holds
        jobs 1..N running `true`; return once nextseq has reached N+1 and the
        daemon has shut down (SIGTERM). Times the daemon's whole life, start-up
        and shut-down included.

Every mode starts the daemon as a real process with NOTIFY_SOCKET set, and
waits for its READY=1 (sd_notify), so no sleep guesses when it is ready.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time


def die(msg):
    print(f"bench/daemon.py: {msg}", file=sys.stderr)
    sys.exit(1)


def toml_str(s):
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def write_config(path, sock, jobs, extra=""):
    """jobs: list of (name, queue, command list)."""
    with open(path, "w") as f:
        f.write("[daemon]\n")
        f.write('log_format = "logfmt"\nlog_level = "warn"\n')
        f.write(f"socket = {toml_str(sock)}\n")
        f.write(extra)
        for name, queue, command in jobs:
            f.write("\n[[job]]\n")
            f.write(f"name = {toml_str(name)}\ntype = \"process\"\n")
            f.write(f"queue = {toml_str(queue)}\n")
            f.write("command = [" + ", ".join(toml_str(c) for c in command) + "]\n")


class Daemon:
    def __init__(self, fspl, config, workdir, log):
        self.notify_path = os.path.join(workdir, "notify.sock")
        if os.path.exists(self.notify_path):
            os.unlink(self.notify_path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([fspl, "daemon", "-c", config], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout=60):
        self.notify.settimeout(0.05)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                die(f"the daemon exited with status {self.proc.returncode} before it was ready "
                    f"(log: {self.log.name})")
            try:
                msg = self.notify.recv(4096)
            except socket.timeout:
                continue
            if b"READY=1" in msg.split(b"\n"):
                return
        die(f"the daemon did not report READY=1 within {timeout} s")

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            die("the daemon did not stop within 60 s of SIGTERM")
        self.notify.close()
        os.unlink(self.notify_path)
        self.log.close()
        if rc != 0:
            die(f"the daemon exited with status {rc} (log: {self.log.name})")


def read_nextseq(queue):
    try:
        with open(os.path.join(queue, "nextseq"), "rb") as f:
            return int(f.read().split(b"\n", 1)[0])
    except (OSError, ValueError):
        return 0


def status(fspl, sock):
    out = subprocess.run([fspl, "status", "--socket", sock, "--json"], capture_output=True, check=True)
    return json.loads(out.stdout)


def percentile(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


# ---------------------------------------------------------------- D1
def latency(a):
    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    queue = os.path.join(work, "q")
    subprocess.run([a.fspl, "queue-init", "-q", queue], check=True)
    # The jobs, made beforehand by fspl prepare (with its default payload
    # digest), so the writer's loop does nothing but queue-write.
    payload = os.path.join(work, "payload")
    with open(payload, "w") as f:
        f.write("hello, queue\n")
    jobs = os.path.join(work, "jobs")
    os.makedirs(jobs)
    for i in range(1, a.count + 1):
        with open(os.path.join(jobs, str(i)), "wb") as out:
            subprocess.run([a.fspl, "prepare", "--seq", str(i), "-i", payload], stdout=out, check=True)
    stamps = os.path.join(work, "stamps")
    conf = os.path.join(work, "daemon.toml")
    sock = os.path.join(work, "daemon.sock")
    write_config(conf, sock, [("lat", queue, [a.stamp, stamps])])
    d = Daemon(a.fspl, conf, work, os.path.join(work, "daemon.log"))
    d.wait_ready()
    rng = random.Random(a.seed)
    exits = {}
    started = time.monotonic()
    for i in range(1, a.count + 1):
        time.sleep(rng.uniform(0, 2 * a.mean_ms / 1000))
        with open(os.path.join(jobs, str(i)), "rb") as job:
            rc = subprocess.run([a.fspl, "queue-write", "-q", queue], stdin=job).returncode
        exits[i] = time.time_ns()
        if rc != 0:
            die(f"queue-write of job {i} failed with status {rc}")
    writing = time.monotonic() - started
    deadline = time.monotonic() + 60
    while read_nextseq(queue) <= a.count and time.monotonic() < deadline:
        time.sleep(0.01)
    d.stop()
    starts = {}
    with open(stamps) as f:
        for line in f:
            seq, ns = line.split()
            if seq in starts:
                die(f"job {seq} ran twice")
            starts[int(seq)] = int(ns)
    if sorted(starts) != list(range(1, a.count + 1)):
        die(f"{len(starts)} of {a.count} jobs ran")
    order = [s for s, _ in sorted(starts.items(), key=lambda kv: kv[1])]
    if order != sorted(order):
        die("jobs started out of order")
    lat = sorted((starts[i] - exits[i]) / 1e6 for i in range(1, a.count + 1))
    result = {
        "count": a.count,
        "mean_interval_ms": a.mean_ms,
        "writing_s": writing,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1],
        "min_ms": lat[0],
        "before_exit": sum(1 for x in lat if x < 0),
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- D2
def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def proc_mem_kib(pid):
    mem = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                mem[k] = int(v.split()[0])
    return mem


def idle(a):
    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    jobs = []
    os.makedirs(os.path.join(work, "queues"))
    for i in range(a.queues):
        q = os.path.join(work, "queues", f"q{i:04}")
        subprocess.run([a.fspl, "queue-init", "-q", q], check=True)
        jobs.append((f"q{i:04}", q, ["true"]))
    conf = os.path.join(work, "daemon.toml")
    sock = os.path.join(work, "daemon.sock")
    write_config(conf, sock, jobs)
    d = Daemon(a.fspl, conf, work, os.path.join(work, "daemon.log"))
    d.wait_ready()
    # Settled: every queue reported (idle) by the daemon itself.
    deadline = time.monotonic() + 60
    while True:
        rows = status(a.fspl, sock)
        states = [r.get("state") for r in rows]
        if len(rows) == a.queues and all(s == "idle" for s in states):
            break
        if time.monotonic() > deadline:
            die(f"after 60 s, {sum(1 for s in states if s == 'idle')} of {a.queues} queues are idle")
        time.sleep(0.2)
    time.sleep(2)
    pid = d.proc.pid
    hz = os.sysconf("SC_CLK_TCK")
    t0, c0 = time.monotonic(), proc_cpu_ticks(pid)
    time.sleep(a.seconds)
    t1, c1 = time.monotonic(), proc_cpu_ticks(pid)
    mem = proc_mem_kib(pid)
    # Still alive and answering after the idle period.
    if len(status(a.fspl, sock)) != a.queues:
        die("the daemon lost queues while idle")
    d.stop()
    result = {
        "queues": a.queues,
        "seconds": t1 - t0,
        "cpu_s": (c1 - c0) / hz,
        "cpu_percent": (c1 - c0) / hz / (t1 - t0) * 100,
        "rss_kib": mem.get("VmRSS"),
        "hwm_kib": mem.get("VmHWM"),
        "anon_kib": mem.get("RssAnon"),
        "file_kib": mem.get("RssFile"),
        "threads": mem.get("Threads"),
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- D3
def drain(a):
    queue = os.path.abspath(a.queue)
    work = queue + ".daemon"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    conf = os.path.join(work, "daemon.toml")
    write_config(conf, os.path.join(work, "daemon.sock"), [("drain", queue, ["true"])])
    d = Daemon(a.fspl, conf, work, os.path.join(work, "daemon.log"))
    d.wait_ready()
    deadline = time.monotonic() + 3600
    while read_nextseq(queue) <= a.count:
        if d.proc.poll() is not None:
            die(f"the daemon exited with status {d.proc.returncode} (log: {work}/daemon.log)")
        if time.monotonic() > deadline:
            die("the queue was not drained within an hour")
        time.sleep(0.005)
    d.stop()
    shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    fspl = argparse.ArgumentParser(add_help=False)
    fspl.add_argument("--fspl", required=True)
    measured = argparse.ArgumentParser(add_help=False, parents=[fspl])
    measured.add_argument("--work", required=True)
    measured.add_argument("--out", required=True)
    l = sub.add_parser("latency", parents=[measured])
    l.add_argument("--count", type=int, required=True)
    l.add_argument("--mean-ms", type=float, required=True)
    l.add_argument("--stamp", required=True)
    l.add_argument("--seed", type=int, default=1)
    i = sub.add_parser("idle", parents=[measured])
    i.add_argument("--queues", type=int, required=True)
    i.add_argument("--seconds", type=float, required=True)
    d = sub.add_parser("drain", parents=[fspl])
    d.add_argument("--queue", required=True)
    d.add_argument("--count", type=int, required=True)
    a = p.parse_args()
    {"latency": latency, "idle": idle, "drain": drain}[a.mode](a)


if __name__ == "__main__":
    main()
