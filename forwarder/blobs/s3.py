"""Blobs in an S3-compatible bucket (boto3), for replicas that share one PostgreSQL store.

Objects are `<prefix><2 hex>/<task id>-<random>`; a PUT is atomic in S3 (a reader sees the whole
object or none). Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, a profile, an instance role); never from the settings file. The bucket must
exist and should not be public: the forwarder is the only reader (it checks who owns a task before
it reads the result).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from taskfabric.forwarder.blobs.base import CHUNK_BYTES, BlobError, BlobMissing, BlobStore

__all__ = ["S3BlobStore"]

_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3BlobStore(BlobStore):
    """Blobs in `bucket` under `prefix`, at `endpoint_url` (None: AWS)."""

    def __init__(self, *, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None):
        self.bucket = bucket
        self.prefix = prefix
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        try:
            self._client: Any = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1", config=config
            )
        except (BotoCoreError, ValueError) as exc:
            raise BlobError(f"cannot open the S3 blob store: {exc}") from None

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _write(self, name: str, data: bytes | memoryview) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=bytes(data))
        except (BotoCoreError, ClientError) as exc:
            raise BlobError(f"cannot write blob {name} to s3://{self.bucket}: {exc}") from None

    def open_chunks(self, name: str) -> Iterator[bytes]:
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise BlobMissing(f"blob {name} is missing") from None
            raise BlobError(f"cannot read blob {name}: {exc}") from None
        except BotoCoreError as exc:
            raise BlobError(f"cannot read blob {name}: {exc}") from None
        return _chunks(answer["Body"], name)

    def delete(self, names: list[str]) -> None:
        for start in range(0, len(names), _DELETE_BATCH):
            keys = [{"Key": self._key(name)} for name in names[start : start + _DELETE_BATCH]]
            try:
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise BlobError(f"cannot delete blobs from s3://{self.bucket}: {exc}") from None

    def sweep(self, before: float) -> int:
        old = [obj["Key"] for obj in self._objects() if obj["LastModified"].timestamp() < before]
        for start in range(0, len(old), _DELETE_BATCH):
            keys = [{"Key": key} for key in old[start : start + _DELETE_BATCH]]
            try:
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise BlobError(f"cannot sweep s3://{self.bucket}: {exc}") from None
        return len(old)

    def usage_bytes(self) -> int:
        return sum(int(obj["Size"]) for obj in self._objects())

    def _objects(self) -> Iterator[dict[str, Any]]:
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                yield from page.get("Contents", [])
        except (BotoCoreError, ClientError) as exc:
            raise BlobError(f"cannot list s3://{self.bucket}: {exc}") from None


def _chunks(body: Any, name: str) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    except (BotoCoreError, ClientError, OSError) as exc:
        raise BlobError(f"cannot read blob {name}: {exc}") from None
    finally:
        body.close()
