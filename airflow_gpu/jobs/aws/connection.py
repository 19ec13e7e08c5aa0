"""The Airflow AWS connection, resolved the way the amazon provider reads it, once per loop.

Reading a connection is blocking I/O (the metadata database, a secrets backend,
an STS call for assume-role), so it runs in a thread, never on the event loop.
Its result is cached per (connection, region) per running event loop, and
concurrent callers share one resolution: a triggerer starting 10,000 triggers
reads the connection once, not 10,000 times. Nothing resolved here is ever put
into trigger kwargs; only the connection id travels.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Any

from airflow_gpu.jobs.spec import JobSpecError

#: The AWS services the Airflow wing's async code reaches.
_SERVICES = ("batch", "logs", "s3", "ecs")  # ecs: the instance type a job ran on, for its bill


@dataclass(frozen=True)
class AwsConnection:
    """What a client needs: an aiobotocore session (with refreshable credentials where the
    connection assumes a role), the region, endpoints from the connection extras, the botocore config."""

    conn_id: str | None
    session: Any = field(repr=False)  # aiobotocore.session.AioSession
    region_name: str
    config: Any = field(repr=False)  # botocore.config.Config
    verify: Any = None
    endpoint_urls: dict[str, str | None] = field(default_factory=dict)

    def endpoint_url(self, service: str) -> str | None:
        return self.endpoint_urls.get(service)


def resolve_blocking(conn_id: str | None, region_name: str | None) -> AwsConnection:
    """Read the connection through the amazon provider's hook (credentials, role, region, extras)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=conn_id, region_name=region_name, client_type="batch")
    wrapper = hook.conn_config
    session = hook.get_session(region_name=wrapper.region_name, deferrable=True)
    region = wrapper.region_name or session.get_config_variable("region")
    if not region:
        raise JobSpecError(
            f"No AWS region for connection {conn_id!r}: pass region_name= to the operator, "
            f"or set region_name in the connection's extras."
        )
    # Load the service models here, in the thread, so creating clients later does not
    # parse JSON on the event loop (s3: the trigger reads the manifest a job committed).
    loader = session.get_component("data_loader")
    for service in _SERVICES:
        loader.load_service_model(service, "service-2")
    return AwsConnection(
        conn_id=conn_id,
        session=session,
        region_name=region,
        config=hook.config,
        verify=hook.verify,
        endpoint_urls={s: wrapper.get_service_endpoint_url(s) for s in _SERVICES},
    )


_cache: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str | None, str | None], asyncio.Task[AwsConnection]]
] = weakref.WeakKeyDictionary()


async def resolve_aws_connection(conn_id: str | None, region_name: str | None) -> AwsConnection:
    """The connection for this loop, resolved in a thread on first use and shared afterwards.

    The resolution runs as its own task, so a caller being cancelled does not fail the
    others waiting on it. A failed resolution is not cached: a fixed connection is
    picked up on the next try.
    """
    loop = asyncio.get_running_loop()
    per_loop = _cache.setdefault(loop, {})
    key = (conn_id, region_name)
    task = per_loop.get(key)
    if task is None:
        task = loop.create_task(asyncio.to_thread(resolve_blocking, conn_id, region_name))
        per_loop[key] = task

        def forget_failure(done: asyncio.Task[AwsConnection]) -> None:
            if done.cancelled() or done.exception() is not None:
                if per_loop.get(key) is done:
                    del per_loop[key]

        task.add_done_callback(forget_failure)
    return await asyncio.shield(task)


def forget_aws_connection(conn_id: str | None, region_name: str | None) -> None:
    """Drop this loop's resolved connection, so the next use reads it again (expired credentials)."""
    per_loop = _cache.get(asyncio.get_running_loop(), {})
    task = per_loop.get((conn_id, region_name))
    if task is not None and task.done():
        del per_loop[(conn_id, region_name)]


def resolve_standard_chain_blocking(
    profile: str | None, region_name: str | None, endpoint_url: str | None
) -> AwsConnection:
    """No Airflow connection: the standard AWS chain (environment, shared config, ``profile``, instance role)."""
    import botocore.exceptions
    from aiobotocore.session import AioSession

    try:
        session = AioSession(profile=profile)
        session.get_scoped_config()  # a missing profile fails here, whether or not a region was given
        region = region_name or session.get_config_variable("region")
    except botocore.exceptions.ProfileNotFound:
        raise JobSpecError(
            f"AWS profile {profile!r} is not in your AWS config; check --profile (aws configure list-profiles)"
        ) from None
    if not region:
        raise JobSpecError("No AWS region: pass --region, set AWS_REGION, or give your profile a region.")
    loader = session.get_component("data_loader")
    for service in ("batch", "logs"):
        loader.load_service_model(service, "service-2")
    return AwsConnection(
        conn_id=None,
        session=session,
        region_name=region,
        config=None,
        endpoint_urls={"batch": endpoint_url, "logs": endpoint_url, "ecs": endpoint_url},
    )


async def resolve_standard_chain(
    profile: str | None, region_name: str | None, endpoint_url: str | None
) -> AwsConnection:
    # The terminal opens one backend per command, so there is nothing to share: resolve in a thread.
    return await asyncio.to_thread(resolve_standard_chain_blocking, profile, region_name, endpoint_url)
