#!/usr/bin/env python3
"""Write fspl v1 job files directly, without spawning fspl once per job.

The format (docs: /work/shared/fspl-format/FORMAT.md, and the fspl-format
crate) is a 30-byte prefix followed by a MessagePack map and the payload:

    "*FILESPOOLER" | u16 BE version 1 | u64 BE metadata length N
    | u32 BE CRC-32 of the metadata | u32 BE CRC-32 of bytes 0..26
    | metadata (N bytes) | payload

    metadata = {"seq": N, "ctime": [secs, nanos],
                "cmd_type": "NOP" | {"Command": {"params": [...], "env": [...]}}}

with the most compact MessagePack integers and byte strings written as
arrays of small integers, as Filespooler 1.2.4 writes them.

`bench/run` checks this generator against the fspl binary before using it
(`genjobs.py one ...` must be byte-identical to `fspl prepare --seq N` with
the same ctime), so a broken generator fails loudly instead of skewing a
benchmark.

Usage:
    genjobs.py one  --seq N --ctime SECS NANOS [--nop] [--payload FILE]  > JOB
    genjobs.py many --dir JOBSDIR --count N [--start S] [--nop] [--payload FILE]
"""

import argparse
import os
import struct
import sys
import time
import uuid
import zlib

TAG = b"*FILESPOOLER"


def mp_uint(n: int) -> bytes:
    if n < 0:
        raise ValueError("negative integers are not used here")
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return b"\xcc" + bytes([n])
    if n <= 0xFFFF:
        return b"\xcd" + struct.pack(">H", n)
    if n <= 0xFFFFFFFF:
        return b"\xce" + struct.pack(">I", n)
    return b"\xcf" + struct.pack(">Q", n)


def mp_str(s: str) -> bytes:
    b = s.encode()
    assert len(b) < 32
    return bytes([0xA0 | len(b)]) + b


def mp_array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n <= 0xFFFF:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def mp_bytes(b: bytes) -> bytes:
    # Byte strings are arrays of small unsigned integers, one per byte.
    return mp_array_header(len(b)) + b"".join(mp_uint(x) for x in b)


def metadata(seq: int, secs: int, nanos: int, nop: bool, params=(), env=()) -> bytes:
    out = [b"\x83", mp_str("seq"), mp_uint(seq), mp_str("ctime"), b"\x92",
           mp_uint(secs), mp_uint(nanos), mp_str("cmd_type")]
    if nop:
        out.append(mp_str("NOP"))
    else:
        out += [b"\x81", mp_str("Command"), b"\x82", mp_str("params"),
                mp_array_header(len(params))]
        out += [mp_bytes(p) for p in params]
        out += [mp_str("env"), mp_array_header(len(env))]
        for name, value in env:
            out += [b"\x92", mp_bytes(name), mp_bytes(value)]
    return b"".join(out)


def job(seq: int, secs: int, nanos: int, nop: bool, payload: bytes) -> bytes:
    meta = metadata(seq, secs, nanos, nop)
    head = TAG + struct.pack(">HQI", 1, len(meta), zlib.crc32(meta))
    head += struct.pack(">I", zlib.crc32(head))
    assert len(head) == 30
    return head + meta + (b"" if nop else payload)


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("one")
    one.add_argument("--seq", type=int, required=True)
    one.add_argument("--ctime", type=int, nargs=2, required=True)
    one.add_argument("--nop", action="store_true")
    one.add_argument("--payload")
    many = sub.add_parser("many")
    many.add_argument("--dir", required=True)
    many.add_argument("--count", type=int, required=True)
    many.add_argument("--start", type=int, default=1)
    many.add_argument("--nop", action="store_true")
    many.add_argument("--payload")
    a = ap.parse_args()

    payload = b""
    if a.payload:
        with open(a.payload, "rb") as f:
            payload = f.read()

    if a.mode == "one":
        sys.stdout.buffer.write(job(a.seq, a.ctime[0], a.ctime[1], a.nop, payload))
        return 0

    now = time.time_ns()
    for i in range(a.count):
        seq = a.start + i
        t = now + i * 1000  # distinct, increasing creation times
        data = job(seq, t // 1_000_000_000, t % 1_000_000_000, a.nop, payload)
        path = os.path.join(a.dir, f"fspl-{uuid.uuid4()}.fspl")
        with open(path, "wb") as f:
            f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
