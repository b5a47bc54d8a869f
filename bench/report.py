#!/usr/bin/env python3
"""Turn the raw results of bench/run (hyperfine JSON, peak RSS, machine
description, syscall counts) into RESULTS.md on stdout.

Usage: report.py RESULTS_DIR
"""

import glob
import json
import os
import re
import sys

res = sys.argv[1]


def load_env():
    env = {}
    with open(os.path.join(res, "env")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            env[k] = v
    return env


env = load_env()
sizes = dict(kv.split("=", 1) for kv in re.findall(r"\S+=[^=]*?(?=\s+\S+=|$)", env["sizes"]))
sizes = {k: v.strip() for k, v in sizes.items()}
N1, N2, N3S, N3L, N4 = (int(sizes[k]) for k in ("N1", "N2", "N3S", "N3L", "N4"))
BIG = int(sizes["BIG_MIB"])
B7_NOP = [int(x) for x in sizes["B7_NOP"].split()]
B7_TRUE = [int(x) for x in sizes["B7_TRUE"].split()]
NS1 = int(sizes.get("NS1", 0))
D3N = int(sizes.get("D3N", 0))
T3N = int(sizes.get("T3N", 0))
P1N = int(sizes.get("P1N", 0))
T1N = int(sizes.get("T1N", 0))
T1S = int(sizes.get("T1S", 0))
T2_MIB = int(sizes.get("T2_MIB", 0))

bench = {}
for path in sorted(glob.glob(os.path.join(res, "*.json"))):
    name = os.path.basename(path)[:-5]
    with open(path) as f:
        for r in json.load(f)["results"]:
            bench[(name, r["command"])] = r


def med(name, cmd="ours"):
    return bench[(name, cmd)]["median"]


def fmt_t(s):
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_kib(k):
    return f"{k / 1024:.1f} MiB" if k >= 1024 else f"{k} KiB"


rows = []  # (id, what, ours, base, ratio, goal, met)
missed = []


def row(rid, what, ours, base, goal, fmt=fmt_t):
    ratio = ours / base
    met = ratio <= goal + 1e-12
    shown = f"{ratio:.3f}×" if abs(ratio - goal) < 0.005 else f"{ratio:.2f}×"
    rows.append((rid, what, fmt(ours), fmt(base), shown, f"≤ {goal:g}×", "met" if met else "**MISSED**"))
    if not met:
        missed.append(rid)


def row_abs(rid, what, value, base, shown, goal, met):
    """A row whose goal is an absolute bound rather than a ratio."""
    rows.append((rid, what, value, base, shown, goal, "met" if met else "**MISSED**"))
    if not met:
        missed.append(rid)


def has(name, cmd="ours"):
    return (name, cmd) in bench


# B1
row("B1", f"prepare \\| queue-write, {N1} tiny jobs: ours / ref", med("B1"), med("B1", "ref"), 0.8)
# B2
row("B2", f"queue-process, {N2} jobs running `true`: ours / ref", med("B2"), med("B2", "ref"), 0.9)
row("B2", f"queue-process, {N2} jobs: ours / raw `xargs -n1 true`", med("B2"), med("B2", "raw"), 1.15)
# B3
row("B3", f"queue-ls, {N3S} jobs: ours / ref", med("B3-small"), med("B3-small", "ref"), 1)
row("B3", f"queue-ls, {N3L} jobs: ours / ref", med("B3-large"), med("B3-large", "ref"), 1)
fixed = med("B3-small", "ours-empty")
pj_s = (med("B3-small") - fixed) / N3S
pj_l = (med("B3-large") - fixed) / N3L
row("B3", f"queue-ls per job (minus empty-queue time {fmt_t(fixed)}): {N3L} / {N3S}", pj_l, pj_s, 1.2)
raw_s, raw_l = med("B3-small") / N3S, med("B3-large") / N3L
# B4
row("B4", f"queue-ls, {N4} zstd jobs: ours (built-in) / ref `-d zstdcat`", med("B4-ls"), med("B4-ls", "ref"), 0.1)
row("B4", f"queue-process, {N4} zstd jobs: ours / ref `-d zstdcat`", med("B4-process"), med("B4-process", "ref"), 0.3)
row("B4", f"queue-process, {N4} jobs: ours zstd / ours uncompressed", med("B4-process"), med("B4-process", "ours-plain"), 1.2)
# B5
big = f"{BIG} MiB" if BIG != 1024 else "1 GiB"
row("B5", f"queue-write, {big} job (checked: header, length, BLAKE3 digest): ours / `dd bs=1M conv=fsync`", med("B5-write"), med("B5-write", "dd"), 1.05)
row("B5", f"queue-write, {big} job: ours / ref", med("B5-write"), med("B5-write", "ref"), 1)
if has("B5-process", "b3sum"):
    floor5 = max(med("B5-process", "cat"), med("B5-process", "b3sum"))
    which = "cat" if med("B5-process", "cat") >= med("B5-process", "b3sum") else "b3sum"
    row("B5", f"queue-process, {big} job into `sh -c 'cat >/dev/null'`: ours / max(`cat`, `b3sum`) "
        f"(here `{which}`: reading the payload once, hashing it once)", med("B5-process"), floor5, 1.1)
else:
    row("B5", f"queue-process, {big} job into `sh -c 'cat >/dev/null'`: ours / plain `cat`", med("B5-process"), med("B5-process", "cat"), 1.3)
if has("B5-sha256"):
    row("B5", f"queue-process, {big} job into `sha256sum` (slower than the hash): ours / ref",
        med("B5-sha256"), med("B5-sha256", "ref"), 1.05)
else:
    row("B5", f"queue-process, {big} job: ours / ref", med("B5-process"), med("B5-process", "ref"), 1)
if has("B5-trust", "ours-trust"):
    row("B5", f"queue-process, {big} signed job into `sh -c 'cat >/dev/null'`: with `--trust` / without",
        med("B5-trust", "ours-trust"), med("B5-trust"), 2)
row("B5", f"prepare -s - -i BIG >/dev/null, {big}: ours / ref", med("B5-prepare"), med("B5-prepare", "ref"), 1)
# B6
rss = {}
with open(os.path.join(res, "rss.tsv")) as f:
    for line in f:
        k, v = line.rstrip("\n").split("\t")
        rss[k] = int(v)
for k in rss:
    if not k.endswith(" ref") and k + " ref" in rss:
        row("B6", f"peak RSS, {k}: ours / ref", rss[k], rss[k + " ref"], 1, fmt_kib)
floor = {}
fp = os.path.join(res, "rss-floor.tsv")
if os.path.exists(fp):
    for line in open(fp):
        k, v = line.rstrip("\n").split("\t")
        floor[k] = int(v)
# B7
fixed_p = med("B7-empty")
pj = {n: (med(f"B7-nop-{n}") - fixed_p) / n for n in B7_NOP}
lo = min(B7_NOP)
for n in B7_NOP:
    if n != lo:
        row("B7", f"queue-process per NOP job (minus empty-queue time {fmt_t(fixed_p)}): {n} / {lo}", pj[n], pj[lo], 1.2)
pjt = {n: (med(f"B7-true-{n}") - fixed_p) / n for n in B7_TRUE}
if len(B7_TRUE) > 1:
    lo_t = min(B7_TRUE)
    for n in B7_TRUE:
        if n != lo_t:
            row("B7", f"queue-process per `true` job: {n} / {lo_t}", pjt[n], pjt[lo_t], 1.2)

# S1-S3: signing, verifying, digest, encryption
if has("S1-sign", "ours-signed"):
    row("S1", f"prepare, {NS1} tiny jobs: signed (`--sign`) / unsigned",
        med("S1-sign", "ours-signed"), med("S1-sign", "ours-unsigned"), 1.1)
    row("S1", f"queue-process, {NS1} jobs running `true`: signed with `--trust` / unsigned",
        med("S1-verify", "ours-signed"), med("S1-verify", "ours-unsigned"), 1.1)
if has("B5-process", "ours-true"):
    t = med("B5-process", "ours-true")
    gbs = BIG * 2**20 / t / 1e9
    row_abs("S2", f"payload digest check, {big} job: queue-process running `true` (reads nothing; "
            "the time is the BLAKE3 check, on all cores, that the job waits for), bytes / time",
            f"{gbs:.2f} GB/s", fmt_t(t), f"{gbs:.2f} GB/s", "≥ 1 GB/s", gbs >= 1.0)
if has("S3", "ours-encrypted"):
    row("S3", f"queue-process, {big} job into `sh -c 'cat >/dev/null'`: encrypted (`--identity`) / plaintext",
        med("S3", "ours-encrypted"), med("S3", "ours-plain"), 1.5)

# D1-D3: the daemon
d1 = d2 = None
if os.path.exists(os.path.join(res, "D1.result")):
    d1 = json.load(open(os.path.join(res, "D1.result")))
    row_abs("D1", f"arrival → start, {d1['count']} jobs written by `queue-write` at random intervals "
            f"(mean {d1['mean_interval_ms']:g} ms): p99 (p50)",
            f"{d1['p99_ms']:.1f} ms", f"p50 {d1['p50_ms']:.1f} ms", f"{d1['p99_ms']:.1f} ms",
            "p99 < 20 ms", d1["p99_ms"] < 20)
if os.path.exists(os.path.join(res, "D2.result")):
    d2 = json.load(open(os.path.join(res, "D2.result")))
    row_abs("D2", f"daemon watching {d2['queues']} idle queues: peak RSS (VmHWM)",
            fmt_kib(d2["hwm_kib"]), f"now {fmt_kib(d2['rss_kib'])}", fmt_kib(d2["hwm_kib"]),
            "< 20 MB", d2["hwm_kib"] * 1024 < 20e6)
    row_abs("D2", f"daemon watching {d2['queues']} idle queues: CPU over {d2['seconds']:.0f} s",
            f"{d2['cpu_percent']:.2f} %", f"{d2['cpu_s']:.2f} s CPU", f"{d2['cpu_percent']:.2f} %",
            "< 1 % of a core", d2["cpu_percent"] < 1)
if D3N and has(f"B7-true-{D3N}", "daemon"):
    row("D3", f"{D3N} `true` jobs: through the daemon (start to drained, start-up and shut-down "
        "included) / `queue-process`",
        med(f"B7-true-{D3N}", "daemon"), med(f"B7-true-{D3N}"), 1.1)

# T1-T3: transports
if T1N and has("T1"):
    row("T1", f"`fspl push` of {T1N} tiny jobs over ssh to 127.0.0.1: ours / `tar c \\| ssh tar x` of the same files",
        med("T1"), med("T1", "tar"), 1.5)
    if has("T1j"):
        row("T1j", f"the same on a journaled ext4 (a loop device; the bench dir's ext4 has none): ours / tar",
            med("T1j"), med("T1j", "tar"), 1.5)
    each = med("T1", "per-job-sample") * T1N / T1S
    x = each / med("T1")
    row_abs("T1", f"the same {T1N} jobs, one `ssh HOST fspl queue-write` each (measured on {T1S} jobs, "
            f"scaled by {T1N // T1S}) / ours", fmt_t(med("T1")), fmt_t(each), f"{x:.0f}×", "≥ 50×", x >= 50)
if T2_MIB and has("T2"):
    big2 = f"{T2_MIB} MiB" if T2_MIB != 1024 else "1 GiB"
    row("T2", f"`fspl push` of one {big2} job over ssh to 127.0.0.1: ours / `ssh HOST 'cat > FILE && sync'`",
        med("T2"), med("T2", "cat"), 1.1)
if T3N and has("T3"):
    row("T3", f"`fspl push` of {T3N} tiny jobs into a folder (`dir:`): ours / `cp` + `sync` of the same files",
        med("T3"), med("T3", "cp"), 1.2)

# P1: retention
if P1N and has("P1"):
    row("P1", f"`fspl prune --dry-run` of {P1N} files with a three-interval grid: ours / "
        "`find DIR -printf '%T@ %p\\n' \\| sort -n`",
        med("P1"), med("P1", "find"), 1.5)

# ---------------------------------------------------------------- output
out = []
p = out.append
title = "Benchmark results" + (" (quick mode)" if env["mode"] == "quick" else "")
p(f"# {title}\n")
p(f"Generated by `bench/run{' --quick' if env['mode'] == 'quick' else ''}` on {env['date']} "
  f"in {int(env['elapsed']) // 60} min {int(env['elapsed']) % 60} s (not counting installs and the build); see [README.md](README.md) "
  "for what each row measures. Times are **medians** of hyperfine runs (after a warm-up run, "
  "except the longest B7 queues: 100,000 NOP jobs and 10,000 `true` jobs; run counts are under "
  "\"All measurements\"); ratios are ours divided by the baseline, "
  "so smaller is better.\n")
if env["mode"] == "quick":
    p(f"Quick mode: smaller sizes ({env['sizes']}) and fewer runs; "
      f"B5 uses a {BIG} MiB payload instead of 1 GiB. Use the full run for real numbers.\n")

p("## Machine\n")
mem_gib = int(env["mem_kib"]) / 1024 / 1024
ls_, le_ = (open(os.path.join(res, x)).read().split()[:3] for x in ("load-start", "load-end"))
fs = open(os.path.join(res, "fsync.txt")).read().split()
p("| | |\n|---|---|")
p(f"| CPU | {env['cpu']}, {env['cores']} cores |")
p(f"| RAM | {mem_gib:.1f} GiB |")
p(f"| kernel | {env['kernel']} |")
p(f"| file system of the bench dir | {env['fs']} |")
p(f"| one in-place `pwrite` + `fdatasync` | {fs[0]} ms |")
p(f"| create + write + `fsync` + directory `fsync` | {fs[1]} ms |")
p(f"| load average (1/5/15 min) at start | {' '.join(ls_)} |")
p(f"| load average at end | {' '.join(le_)} |")
p(f"| date | {env['date']} |")
p(f"| fspl | {env['commit']}, `cargo build --release` |")
p(f"| reference | {env['ref'].split(' (')[0]} |")
p(f"| tools | {env['hyperfine']}, {env['rustc']} |")
p("")

if float(ls_[0]) >= 1.0:
    p(f"**The machine was busy when this run started** (1-minute load average {ls_[0]}, on "
      f"{env['cores']} cores; the load at the end, {le_[0]}, includes the benchmark's own): other "
      "processes competed for the CPU and, "
      "worse, for the disk, so the flush-bound rows (B1, B2, B5 write, B7) carry their noise; "
      "see the min … max spread under \"All measurements\".\n")
p("## Results\n")
p("| row | what | ours | baseline | ratio | goal | |")
p("|---|---|---:|---:|---:|---:|---|")
for r in rows:
    p("| " + " | ".join(r) + " |")
p("")
n_met = sum(1 for r in rows if r[6] == "met")
p(f"{n_met} of {len(rows)} goals met" + (f"; missed: {', '.join(sorted(set(missed)))}." if missed else "."))
p("")
p(f"B3 per job without subtracting the fixed cost: {fmt_t(raw_s)} at {N3S} jobs, "
  f"{fmt_t(raw_l)} at {N3L} jobs.\n")
for name, what in (("B5-write", "queue-write"), ("B5-process", "queue-process"), ("B5-prepare", "prepare")):
    if (name, "ours-nodigest") in bench:
        base = {"B5-process": "cat", "B5-write": "dd"}.get(name, "ref")
        p(f"B5 {what} with `--no-digest` (no payload length and BLAKE3 digest; fspl's default adds "
          f"them for a regular file): {fmt_t(med(name, 'ours-nodigest'))}, "
          f"{med(name, 'ours-nodigest') / med(name, base):.2f}× {base}.\n")
if "B5-prepare" in {k[0] for k in bench} and ("B5-prepare", "cat") in bench:
    p(f"For scale, `cat BIG >/dev/null` (the payload read once from the page cache): "
      f"{fmt_t(med('B5-prepare', 'cat'))}.\n")
p(f"B2's queue holds {env.get('t2_from', 'generated jobs')}.\n")
if has("T3", "ours-queue"):
    p(f"T3 into a queue directory instead of a folder (the same push, jobs go into its `jobs/`): "
      f"{fmt_t(med('T3', 'ours-queue'))}, {med('T3', 'ours-queue') / med('T3', 'cp'):.2f}× `cp` + `sync`.\n")
if has("T3", "cp-rm"):
    p(f"T3 against the same move by hand (`cp` + `sync` + `rm` + `sync`, as a push also empties the "
      f"outbox): {fmt_t(med('T3', 'cp-rm'))}; the push is {med('T3') / med('T3', 'cp-rm'):.2f}× that.\n")
if has("S3", "age"):
    p(f"S3 for scale: `age -d` (Debian's age, Go) decrypting the same job to /dev/null takes "
      f"{fmt_t(med('S3', 'age'))}; fspl's encrypted run is {med('S3', 'ours-encrypted') / med('S3', 'age'):.2f}× that.\n")
if d1:
    p(f"D1 in full: p50 {d1['p50_ms']:.2f} ms, p90 {d1['p90_ms']:.2f} ms, p99 {d1['p99_ms']:.2f} ms, "
      f"max {d1['max_ms']:.2f} ms, min {d1['min_ms']:.2f} ms; {d1['before_exit']} of {d1['count']} "
      "commands started before the `queue-write` that delivered their job had exited (the daemon "
      "sees the rename into `jobs/` while the writer still flushes the directory), which shows as a "
      "negative latency. The command is bench/stamp.c, which records the wall clock first thing.\n")
if d2:
    p(f"D2 in full: {d2['queues']} queues, {d2['threads']} threads, RSS {fmt_kib(d2['rss_kib'])} "
      f"(anonymous {fmt_kib(d2['anon_kib'])}, file-backed {fmt_kib(d2['file_kib'])}), "
      f"CPU {d2['cpu_s']:.2f} s in {d2['seconds']:.0f} s.\n")
p("B7 uses NOP jobs (`fspl prepare-nop`, generated): each job is pure queue machinery "
  "(find the file, read its header, durable nextseq advance with `pwrite` + `fdatasync`, "
  "unlink) and no command is spawned, so the per-job cost isolates how the queue scales. "
  "Per-job costs: " + ", ".join(f"{n}: {fmt_t(pj[n])}" for n in B7_NOP) + "."
  + (" With `true` jobs: " + ", ".join(f"{n}: {fmt_t(pjt[n])}" for n in B7_TRUE) + "." if B7_TRUE else "")
  + "\n")

notes_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.py")


def perf_share(name, sym):
    path = os.path.join(res, f"perf-{name}.txt")
    if not os.path.exists(path):
        return "n/a"
    syms = sym if isinstance(sym, tuple) else (sym,)
    tot = sum(float(l.split("%")[0]) for l in open(path) if any(x in l for x in syms))
    return f"{tot:.0f} %"


def rss_slope(key_small, key_large):
    try:
        return f"{(rss[key_large] - rss[key_small]) * 1024 / (N3L - N3S):.0f}"
    except (KeyError, ZeroDivisionError):
        return "n/a"


def text_size(which):
    try:
        import subprocess
        out = subprocess.run(["size", env["bin_" + which]], capture_output=True, text=True).stdout
        return f"{int(out.splitlines()[1].split()[0]) / 1e6:.1f} MB"
    except Exception:
        return "n/a"


ctx = {
    "fdatasync_ms": fs[0], "create_ms": fs[1],
    "b1_ours_ms": f"{med('B1') / N1 * 1e3:.2f}", "b1_ref_ms": f"{med('B1', 'ref') / N1 * 1e3:.2f}",
    "b2_ref_ms": f"{med('B2', 'ref') / N2 * 1e3:.2f}",
    "b2_ours_ms": f"{med('B2') / N2 * 1e3:.2f}", "b2_raw_ms": f"{med('B2', 'raw') / N2 * 1e3:.2f}",
    "blake_prepare": perf_share("B5-prepare", "blake3"), "blake_process": perf_share("B5-process", "blake3"),
    "b5_cat": fmt_t(med("B5-process", "cat")), "b5_b3sum": fmt_t(med("B5-process", "b3sum")) if has("B5-process", "b3sum") else "n/a",
    "b5_ours": fmt_t(med("B5-process")), "b5_ref": fmt_t(med("B5-process", "ref")),
    "b5_true": fmt_t(med("B5-process", "ours-true")) if has("B5-process", "ours-true") else "n/a",
    "b5_trust": fmt_t(med("B5-trust", "ours-trust")) if has("B5-trust", "ours-trust") else "n/a",
    "b5_notrust": fmt_t(med("B5-trust")) if has("B5-trust") else "n/a",
    "b5_sha_ours": fmt_t(med("B5-sha256")) if has("B5-sha256") else "n/a",
    "b5_sha_ref": fmt_t(med("B5-sha256", "ref")) if has("B5-sha256") else "n/a",
    "s3_enc": fmt_t(med("S3", "ours-encrypted")) if has("S3", "ours-encrypted") else "n/a",
    "s3_plain": fmt_t(med("S3", "ours-plain")) if has("S3", "ours-plain") else "n/a",
    "s3_age": fmt_t(med("S3", "age")) if has("S3", "age") else "n/a",
    "start_ours": fmt_t(med("B0-start")) if ("B0-start", "ours") in bench else "n/a",
    "start_ref": fmt_t(med("B0-start", "ref")) if ("B0-start", "ref") in bench else "n/a",
    "prep_ours": fmt_t(med("B0-start", "ours-prepare")) if ("B0-start", "ours") in bench else "n/a",
    "prep_ref": fmt_t(med("B0-start", "ref-prepare")) if ("B0-start", "ours") in bench else "n/a",
    "prepseq_ours": fmt_t(med("B0-start", "ours-prepare-seq")) if ("B0-start", "ours-prepare-seq") in bench else "n/a",
    "prepseq_ref": fmt_t(med("B0-start", "ref-prepare-seq")) if ("B0-start", "ref-prepare-seq") in bench else "n/a",
    "qw_ours": fmt_t(med("B0-write")) if ("B0-write", "ours") in bench else "n/a",
    "qw_ref": fmt_t(med("B0-write", "ref")) if ("B0-write", "ref") in bench else "n/a",
    "zstd_dctx": perf_share("B4-process", "ZSTD_createDCtx"),
    "nd_process": f"{med('B5-process', 'ours-nodigest') / med('B5-process', 'cat'):.2f}" if ("B5-process", "ours-nodigest") in bench else "n/a",
    "nd_prepare": f"{med('B5-prepare', 'ours-nodigest') / med('B5-prepare', 'ref'):.2f}" if ("B5-prepare", "ours-nodigest") in bench else "n/a",
    "floor_ours": fmt_kib(floor.get("ours --version", 0)), "floor_ref": fmt_kib(floor.get("ref --version", 0)),
    "text_ours": text_size("ours"), "text_ref": text_size("ref"),
    "s1_sign": fmt_t(med("S1-sign", "ours-signed")) if has("S1-sign", "ours-signed") else "n/a",
    "s1_unsign": fmt_t(med("S1-sign", "ours-unsigned")) if has("S1-sign", "ours-unsigned") else "n/a",
    "s1_ver": fmt_t(med("S1-verify", "ours-signed")) if has("S1-verify", "ours-signed") else "n/a",
    "s1_unver": fmt_t(med("S1-verify", "ours-unsigned")) if has("S1-verify", "ours-unsigned") else "n/a",
    "t1_ours": fmt_t(med("T1")) if has("T1") else "n/a",
    "t1_tar": fmt_t(med("T1", "tar")) if has("T1", "tar") else "n/a",
    "t1j_ours": fmt_t(med("T1j")) if has("T1j") else "n/a",
    "t1j_tar": fmt_t(med("T1j", "tar")) if has("T1j", "tar") else "n/a",
    "t3_ours": fmt_t(med("T3")) if has("T3") else "n/a",
    "t3_cp": fmt_t(med("T3", "cp")) if has("T3", "cp") else "n/a",
    "t3_cprm": fmt_t(med("T3", "cp-rm")) if has("T3", "cp-rm") else "n/a",
    "s1_ver_us": f"{(med('S1-verify', 'ours-signed') - med('S1-verify', 'ours-unsigned')) / NS1 * 1e6:.0f}" if has("S1-verify", "ours-signed") else "n/a",
    "s3_age_ratio": f"{med('S3', 'age') / med('S3', 'ours-plain'):.2f}" if has("S3", "age") else "n/a",
    "s3_crypto": perf_share("S3", ("chacha20", "poly1305")),
    "s3_blake": perf_share("S3", "blake3"),
    "b3_bytes_ours": rss_slope(f"B3 queue-ls ({N3S})", f"B3 queue-ls ({N3L})"),
    "b3_bytes_ref": rss_slope(f"B3 queue-ls ({N3S}) ref", f"B3 queue-ls ({N3L}) ref"),
}
if missed and os.path.exists(notes_path):
    ns = {}
    exec(open(notes_path).read(), ns)
    texts = ns["notes"](ctx)
    p("## Missed goals: why\n")
    for rid in sorted(set(missed)):
        text = texts.get(rid)
        if text:
            p(f"**{rid}.** {text.strip()}\n")
        else:
            p(f"**{rid}.** No analysis written for this row yet; see the syscall profiles below.\n")


def strace_summary(path, keep=("fsync", "fdatasync", "rename", "unlink", "openat", "pwrite64",
                              "write", "read", "getdents64", "clone3", "execve", "wait4",
                              "statx", "flock", "total")):
    if not os.path.exists(path):
        return None
    calls = {}
    for line in open(path):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\S+)$", line)
        if m:
            calls[m.group(2)] = int(m.group(1))
    return {k: calls.get(k, 0) for k in keep}


p("## Syscall profiles\n")
p("`strace -c -f`: one `queue-write` of one tiny job (B1), and `queue-process` of 200 "
  "tiny jobs running `true` (B2, counts include the children before `exec`).\n")
sb = {(b, who): strace_summary(os.path.join(res, f"strace-{b}-{who}.txt"))
      for b in ("B1", "B2") for who in ("ours", "ref")}
if all(sb.values()):
    keys = list(sb[("B1", "ours")].keys())
    p("| syscall | B1 ours | B1 ref | B2 ours | B2 ref |")
    p("|---|---:|---:|---:|---:|")
    for k in keys:
        vals = [sb[(b, w)][k] for b in ("B1", "B2") for w in ("ours", "ref")]
        if any(vals):
            p(f"| {k} | " + " | ".join(str(v) for v in vals) + " |")
    p("")
else:
    p("(strace not available)\n")

profiles = sorted(glob.glob(os.path.join(res, "perf-*.txt")))
if profiles:
    p("## CPU profiles\n")
    p("`perf record -e cpu-clock` of one run each, samples by process name (`ours` is fspl; "
      "`fspl-pump`, `fspl-feed`, `fspl-check`, `fspl-hash` and `fspl-decrypt` its threads that "
      "pipe, feed, check, hash and decrypt payloads; `true`/`sh`/`cat` the job's command), "
      "shared object and symbol; entries under 0.5 % left out.\n")
    for path in profiles:
        name = os.path.basename(path)[5:-4]
        body = open(path).read().rstrip()
        if body:
            p(f"{name}:\n\n```\n{body}\n```\n")

p("## All measurements\n")
p("| benchmark | command | median | mean ± σ | min … max | runs |")
p("|---|---|---:|---:|---:|---:|")
for (name, cmd), r in bench.items():
    p(f"| {name} | {cmd} | {fmt_t(r['median'])} | {fmt_t(r['mean'])} ± {fmt_t(r['stddev'] or 0)} "
      f"| {fmt_t(r['min'])} … {fmt_t(r['max'])} | {len(r['times'])} |")
p("")
p("Peak RSS (`/usr/bin/time -f %M`, one run each)"
  + (f"; the floor, `--version`: ours {fmt_kib(floor.get('ours --version', 0))}, "
     f"ref {fmt_kib(floor.get('ref --version', 0))}" if floor else "") + ":\n")
p("| command | peak RSS |")
p("|---|---:|")
for k, v in rss.items():
    p(f"| {k} | {fmt_kib(v)} |")
p("")
# The build-variant section (bench/variants) is measured separately: keep it.
_prev = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
if os.path.exists(_prev):
    _t = open(_prev).read()
    _b, _e = "<!-- variants:begin -->", "<!-- variants:end -->"
    if _b in _t and _e in _t:
        p(_t[_t.index(_b):_t.index(_e) + len(_e)])
print("\n".join(out))
