"""The compression frame of user payloads (`taskfabric.protocol.payloads`) and its use by the
client's serializer and the worker's result packer."""

from __future__ import annotations

import os
import pickle
import struct
import zlib

import pytest

from taskfabric.client.serialization import serialize_arguments, value_from_result
from taskfabric.errors import DeserializationFailed, ProtocolError
from taskfabric.manager.execution import dump_value
from taskfabric.protocol.payloads import (
    COMPRESSION_MAGIC,
    Compression,
    decode_payload,
    encode_payload,
    is_compressed,
)

TEXT = b" ".join(b"word%d value=%d" % (i % 977, i * 7) for i in range(100_000))


def test_compressible_payload_is_framed_smaller_and_round_trips() -> None:
    data = pickle.dumps(bytes(1 << 20), protocol=5)
    framed = encode_payload(data)
    assert is_compressed(framed)
    assert len(framed) < len(data) // 100
    assert decode_payload(framed) == data


def test_text_is_compressed() -> None:
    framed = encode_payload(pickle.dumps(TEXT, protocol=5))
    assert is_compressed(framed)
    assert pickle.loads(decode_payload(framed)) == TEXT


@pytest.mark.parametrize(
    "data",
    [os.urandom(1 << 20), zlib.compress(os.urandom(1 << 20).hex().encode(), 9)],
    ids=["random", "already-compressed"],
)
def test_incompressible_payload_is_sent_as_it_is(data: bytes) -> None:
    payload = pickle.dumps(data, protocol=5)
    assert encode_payload(payload) is payload


def test_small_payload_and_disabled_policy_are_not_framed() -> None:
    small = pickle.dumps(bytes(1000), protocol=5)
    assert encode_payload(small) is small
    big = pickle.dumps(bytes(1 << 20), protocol=5)
    assert encode_payload(big, Compression(enabled=False)) is big


def test_unframed_payload_decodes_unchanged() -> None:
    old = pickle.dumps(((1, 2), {}), protocol=5)
    assert decode_payload(old) is old
    assert not is_compressed(old)


def test_declared_size_over_the_limit_is_refused_before_decompressing() -> None:
    framed = encode_payload(bytes(1 << 20))
    with pytest.raises(ProtocolError, match="over the limit"):
        decode_payload(framed, max_bytes=1000)


def test_lying_declared_size_is_refused() -> None:
    framed = encode_payload(bytes(1 << 20))
    header = struct.pack(">4sBQ", COMPRESSION_MAGIC, 1, 10)
    with pytest.raises(ProtocolError, match="compressed payload"):
        decode_payload(header + framed[13:])


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (COMPRESSION_MAGIC + b"\x01", "truncated"),
        (struct.pack(">4sBQ", COMPRESSION_MAGIC, 9, 10) + b"x", "unknown codec"),
        (struct.pack(">4sBQ", COMPRESSION_MAGIC, 1, 10) + b"not zstd", "zstd could not"),
    ],
)
def test_malformed_frames_raise_protocol_error(frame: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_payload(frame)


@pytest.mark.parametrize(
    "kwargs",
    [{"min_bytes": -1}, {"level": 30}, {"max_sample_ratio": 0}, {"sample_bytes": 0}],
)
def test_bad_policy_names_the_setting(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Compression(**kwargs)  # type: ignore[arg-type]


def test_client_arguments_and_worker_results_use_the_frame() -> None:
    args = serialize_arguments((bytes(1 << 20),), {"k": TEXT})
    assert is_compressed(args)
    assert pickle.loads(decode_payload(args)) == ((bytes(1 << 20),), {"k": TEXT})
    value = dump_value([TEXT, TEXT])
    assert is_compressed(value)
    assert value_from_result(value) == [TEXT, TEXT]
    assert value_from_result(pickle.dumps(42)) == 42


def test_client_names_a_corrupt_compressed_result() -> None:
    with pytest.raises(DeserializationFailed, match="compressed payload"):
        value_from_result(struct.pack(">4sBQ", COMPRESSION_MAGIC, 1, 10) + b"garbage")
