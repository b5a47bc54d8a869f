#!/usr/bin/env python3
"""N3's baseline: a minimal nats-py client moving the same job files
through JetStream as `fspl push` + `fspl pull` do: publish each file's
bytes (Nats-Msg-Id = its BLAKE2b digest) awaiting each acknowledgement,
then fetch them from a durable pull consumer and acknowledge each. Nothing
is written to disk on the receiving side (fspl's pull stores every job
durably), so this is an upper bound for a client, not a like-for-like
program.

Usage: nats_n3.py NATS_URL JOBS_DIR STREAM
Prints: "publish SECONDS", "consume SECONDS", "jobs N".
"""

import asyncio
import hashlib
import os
import sys
import time

import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig


async def main(url: str, jobs_dir: str, stream: str) -> None:
    files = sorted(os.listdir(jobs_dir))
    blobs = []
    for f in files:
        with open(os.path.join(jobs_dir, f), "rb") as fh:
            blobs.append(fh.read())
    nc = await nats.connect(url)
    js = nc.jetstream()
    subject = f"{stream}.jobs"
    await js.add_stream(
        StreamConfig(
            name=stream,
            subjects=[subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
    )
    t = time.monotonic()
    for b in blobs:
        await js.publish(subject, b, headers={"Nats-Msg-Id": hashlib.blake2b(b).hexdigest()})
    published = time.monotonic() - t
    sub = await js.pull_subscribe(subject, durable="n3")
    t = time.monotonic()
    got = 0
    while got < len(blobs):
        msgs = await sub.fetch(1000, timeout=5)
        for m in msgs:
            await m.ack_sync()
            got += 1
    consumed = time.monotonic() - t
    await nc.close()
    print(f"publish {published:.3f}")
    print(f"consume {consumed:.3f}")
    print(f"jobs {got}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
