"""ObjectStore: the Airflow wing's blocking access to objects, in S3 through an AWS connection or on a local disk.

It is blocking on purpose: it runs in Airflow workers and the terminal, reads the AWS
connection the way every amazon-provider operator does, and object counts here are small
(a listing, a manifest and the files it names, a staged payload), so one boto3 client is plenty.
The triggerer reads without blocking through :mod:`airflow_gpu.jobs.aws.objects` instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

from airflow_gpu.contract import local_path, split_s3
from airflow_gpu.faults import S3_ABSENT, error_code


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    name: str  # relative to the listed prefix
    size: int


class ObjectStore:
    """One AWS connection's view of S3, plus the local file system for plain paths."""

    def __init__(
        self, aws_conn_id: str | None = "aws_default", region_name: str | None = None, *, client: Any = None
    ) -> None:
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self._client: Any = (
            client  # a ready boto3 S3 client (the terminal's, from the standard chain), else the connection's
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            self._client = S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).get_conn()
        return self._client

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursively), markers included, in key order."""
        if prefix.startswith("s3://"):
            bucket, key = split_s3(prefix)
            key = key if not key or key.endswith("/") else key + "/"
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            for page in pages:
                for item in page.get("Contents", ()):
                    yield ObjectInfo(f"s3://{bucket}/{item['Key']}", item["Key"][len(key) :], int(item["Size"]))
            return
        root = local_path(prefix)
        if not root.is_dir():
            return
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            yield ObjectInfo(str(path), path.relative_to(root).as_posix(), path.stat().st_size)

    def read(self, uri: str) -> bytes | None:
        """The whole object, or None when it does not exist."""
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            try:
                return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except self.client.exceptions.NoSuchKey:
                return None
        try:
            return local_path(uri).read_bytes()
        except FileNotFoundError:
            return None

    def size(self, uri: str) -> int | None:
        """The object's size, or None when it does not exist."""
        if uri.startswith("s3://"):
            import botocore.exceptions

            bucket, key = split_s3(uri)
            try:
                return int(self.client.head_object(Bucket=bucket, Key=key)["ContentLength"])
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) in S3_ABSENT:
                    return None
                raise
        try:
            return local_path(uri).stat().st_size
        except FileNotFoundError:
            return None

    def write(self, uri: str, data: bytes, content_type: str = "application/json") -> None:
        """Replace the object in one step: one PUT, or a rename on a local disk."""
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
            return
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
