"""What zstd compression of user payloads costs and saves (`taskfabric.protocol.payloads`).

For typical 1 MiB payloads (pickled numpy arrays of random floats, zeros and small integers; text;
random bytes; already-compressed bytes) and zstd levels 1 and 3: the framed size, the ratio, and
the time to encode (sample + compress, or sample only when the sample does not shrink) and decode.

    .venv/bin/python benchmarks/payload_compression.py
"""

from __future__ import annotations

import functools
import os
import pickle
import time
import zlib

import numpy as np

from taskfabric.protocol.payloads import Compression, decode_payload, encode_payload

RUNS = 20


def payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    text = " ".join(f"word{i % 977} value={i * 7}" for i in range(200_000)).encode()[: 1 << 20]
    return {
        "numpy random float64": pickle.dumps(rng.random(131_072), protocol=5),
        "numpy zeros float64": pickle.dumps(np.zeros(131_072), protocol=5),
        "numpy int32 in 0..99": pickle.dumps(rng.integers(0, 100, 262_144, dtype=np.int32), protocol=5),
        "text": pickle.dumps(text, protocol=5),
        "random bytes": pickle.dumps(os.urandom(1 << 20), protocol=5),
        "zlib-compressed hex": pickle.dumps(zlib.compress(os.urandom(1 << 19).hex().encode(), 9), protocol=5),
    }


def timed(fn, arg):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(RUNS):
        out = fn(arg)
    return out, (time.perf_counter() - start) / RUNS


def main() -> None:
    print("| payload | level | bytes | framed bytes | ratio | encode ms | decode ms | encode MB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, data in payloads().items():
        for level in (1, 3):
            policy = Compression(level=level)
            framed, encode_s = timed(functools.partial(encode_payload, policy=policy), data)
            decoded, decode_s = timed(decode_payload, framed)
            assert decoded == data
            print(
                f"| {name} | {level} | {len(data)} | {len(framed)} | {len(framed) / len(data):.3f} "
                f"| {encode_s * 1e3:.2f} | {decode_s * 1e3:.2f} | {len(data) / encode_s / 1e6:.0f} |"
            )


if __name__ == "__main__":
    main()
