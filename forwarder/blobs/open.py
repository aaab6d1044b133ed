"""The blob store a URL names: `file:///PATH` (or a bare path) or `s3://BUCKET/PREFIX`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from taskfabric.forwarder.blobs.base import BlobError, BlobStore
from taskfabric.forwarder.blobs.filesystem import FilesystemBlobStore

__all__ = ["check_blob_url", "open_blob_store"]


def check_blob_url(url: str) -> None:
    """Raise ValueError naming what is wrong with a blob store URL."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError("a file blob store URL is file:///ABSOLUTE/PATH")
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("an S3 blob store URL is s3://BUCKET[/PREFIX]")
    else:
        raise ValueError(f"unknown blob store scheme {parts.scheme!r} (file:// or s3://)")


def open_blob_store(url: str, *, s3_endpoint_url: str | None = None, s3_region: str | None = None) -> BlobStore:
    """Open the blob store at `url` (see `check_blob_url`); raises `BlobError`."""
    try:
        check_blob_url(url)
    except ValueError as exc:
        raise BlobError(str(exc)) from None
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FilesystemBlobStore(Path(parts.path))
    from taskfabric.forwarder.blobs.s3 import S3BlobStore  # boto3 only when S3 is configured

    prefix = parts.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3BlobStore(bucket=parts.netloc, prefix=prefix, endpoint_url=s3_endpoint_url, region=s3_region)
