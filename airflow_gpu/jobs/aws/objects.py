"""One S3 object, read on the event loop through aiobotocore (the triggerer reads a job's manifest).

The client comes from the loop's resolved AWS connection (:mod:`airflow_gpu.jobs.aws.connection`),
the same credentials, region and endpoint the job watcher uses; nothing blocks the loop.
"""

from __future__ import annotations

import botocore.exceptions

from airflow_gpu.contract import split_s3
from airflow_gpu.faults import S3_ABSENT, error_code
from airflow_gpu.jobs.aws.connection import resolve_aws_connection


async def read_s3_object(conn_id: str | None, region_name: str | None, uri: str) -> bytes | None:
    """The whole object at ``uri`` (``s3://bucket/key``), or None when it does not exist."""
    connection = await resolve_aws_connection(conn_id, region_name)
    bucket, key = split_s3(uri)
    async with connection.session.create_client(
        "s3",
        region_name=connection.region_name,
        endpoint_url=connection.endpoint_url("s3"),
        config=connection.config,
        verify=connection.verify,
    ) as client:
        try:
            reply = await client.get_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in S3_ABSENT:
                return None
            raise
        async with reply["Body"] as body:
            data: bytes = await body.read()
            return data
