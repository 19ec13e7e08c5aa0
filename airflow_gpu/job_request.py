"""JobRequest: every field of a GPU job request, declared once.

A field's metadata says whether Airflow renders it (``templated``), which check it gets, and the
flag ``airflow-gpu submit`` gives it where the flag maps one to one. Everything that lists the
fields derives from this class: ``GpuBatchOperator.template_fields`` and the values its
``__init__`` stores, the start trigger's kwargs and ``serialize()``, the checks run at DAG parse
time and at run time, the ``JobSpec`` a request becomes, and the terminal's flags.
``tests/unit/test_job_request.py`` holds the operator's explicit signature (its public API) and
the start trigger to it.

A field JobSpec is built from is checked by ``FIELD_CHECKS`` in :mod:`airflow_gpu.jobs.spec` (its
one table of hints, in the layer below this one); the others name their check here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Mapping, Sequence

from airflow_gpu.jobs.backend import check_backend_name
from airflow_gpu.jobs.spec import (
    FIELD_CHECKS,
    JobSpec,
    JobSpecError,
    TaskIdentity,
    check_max_queued,
    check_name,
    check_poll_interval,
    holds_template,
    is_template,
)

#: Seconds between polls unless poll_interval says otherwise: a local job is a process on this
#: machine (a 1-s function should not take 30 s); Batch's jobs run for minutes and its API is rate-limited.
LOCAL_POLL_INTERVAL = 2.0
BATCH_POLL_INTERVAL = 30.0


def default_poll_interval(backend: str) -> float:
    return LOCAL_POLL_INTERVAL if backend == "local" else BATCH_POLL_INTERVAL


def check_output_uri(value: Any) -> str | None:
    if value is None:
        return None
    return check_name("output_uri", value, "Pass the job's output prefix (s3://bucket/prefix/ or a folder), or None.")


def _field(
    default: Any,
    *,
    templated: bool,
    check: Callable[[Any], Any] | None = None,
    flag: Mapping[str, Any] | None = None,
) -> Any:
    """``templated``: Airflow renders it, so it is checked once rendered (and at parse time when plain);
    otherwise ``check`` (FIELD_CHECKS' for a JobSpec field) normalises it when the operator is built.
    ``flag``: ``add_argument`` keywords of its ``airflow-gpu submit`` flag (``--field-name``)."""
    return field(default=default, metadata={"templated": templated, "check": check, "flag": flag})


@dataclass(frozen=True)
class JobRequest:
    """What a task (or a terminal) asks of the job system; values as given, unchecked and maybe unrendered.

    The parameters are documented once, on :class:`~airflow_gpu.operators.GpuBatchOperator`.
    """

    job_queue: str | None = _field(None, templated=True)
    job_definition: str | None = _field(None, templated=True)
    command: Sequence[str] | None = _field(None, templated=True)
    environment: Mapping[str, str] | None = _field(None, templated=True)
    gpus: int = _field(1, templated=True, flag={"type": int, "help": "GPUs (0-16)"})
    vcpus: int | None = _field(None, templated=True, flag={"type": int, "help": "vCPUs (else the definition's)"})
    memory_mib: int | None = _field(
        None, templated=True, flag={"type": int, "help": "memory in MiB (else the definition's)"}
    )
    job_name: str | None = _field(None, templated=True)
    tags: Mapping[str, str] | None = _field(None, templated=True)
    parameters: Mapping[str, str] | None = _field(None, templated=True)
    share_identifier: str | None = _field(
        None,
        templated=True,
        flag={"metavar": "SHARE", "help": "fair-share identifier (required by a queue with a fair-share policy)"},
    )
    scheduling_priority: int | None = _field(
        None,
        templated=True,
        flag={"type": int, "metavar": "N", "help": "priority within the share, 0-9999 (else the definition's)"},
    )
    retry_attempts: int = _field(3, templated=False)
    timeout: timedelta | float | None = _field(
        None, templated=False, flag={"type": float, "metavar": "S", "help": "attempt timeout in seconds (at least 60)"}
    )
    max_queued: timedelta | float | None = _field(
        None,
        templated=False,
        check=check_max_queued,
        flag={"type": float, "metavar": "S", "help": "terminate the job if it waits longer than this for capacity"},
    )
    aws_conn_id: str | None = _field("aws_default", templated=True)
    region_name: str | None = _field(None, templated=True)
    poll_interval: float | None = _field(None, templated=True)  # None: by backend (check_job_fields)
    stream_logs: bool = _field(True, templated=False, check=bool)
    backend: str = _field("aws_batch", templated=True)  # checked by name, here and by the operator
    output_uri: str | None = _field(None, templated=True, check=check_output_uri)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def template_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["templated"])

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def flags(cls) -> dict[str, Mapping[str, Any]]:
        """The fields ``airflow-gpu submit`` takes as ``--field-name`` flags, with their add_argument keywords."""
        return {f.name: f.metadata["flag"] for f in dataclasses.fields(cls) if f.metadata["flag"]}

    @classmethod
    def of(cls, job: Any) -> JobRequest:
        """The request an operator or a start trigger holds (as attributes of the fields' names)."""
        return cls(**{name: getattr(job, name) for name in cls.names()})

    @classmethod
    def checked_at_init(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` (every field) with each field Airflow does not render checked and normalised now."""
        return {
            f.name: given[f.name] if f.metadata["templated"] else (_check_of(f) or _unchecked)(given[f.name])
            for f in dataclasses.fields(cls)
        }

    @classmethod
    def from_trigger_kwargs(cls, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The fields of a trigger's kwargs, with the declared default for one it lacks (a row an earlier
        release serialized); a name that is not a field is a TypeError, as a keyword argument would be."""
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise TypeError(f"unexpected job request field {unknown[0]!r}")
        return {**cls.defaults(), **kwargs}

    def trigger_kwargs(self) -> dict[str, Any]:
        """The fields as JSON keeps them (the Trigger row): a tuple becomes a list, a mapping a dict."""
        return {name: _json_ready(getattr(self, name)) for name in self.names()}

    def spec(self, identity: TaskIdentity) -> JobSpec:
        """The checked JobSpec (values rendered by now); a JobSpecError names the first bad field."""
        return JobSpec.build(identity=identity, **{name: getattr(self, name) for name in FIELD_CHECKS})


def _check_of(f: dataclasses.Field) -> Callable[[Any], Any] | None:
    return FIELD_CHECKS.get(f.name) or f.metadata["check"]


def _unchecked(value: Any) -> Any:
    return value


def _json_ready(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping) and not isinstance(value, dict):
        return dict(value)
    return value


def job_spec(job: Any, identity: TaskIdentity) -> JobSpec:
    return JobRequest.of(job).spec(identity)


def check_job_fields(job: Any, *, skip_templates: bool) -> None:
    """Check the templated fields of ``job`` (the operator, or the trigger that starts it): at DAG parse
    time those that are plain values, at run time (after rendering) all of them -- always before any
    call to a backend. Rendered values are normalised in place (backend, poll_interval)."""
    for f in dataclasses.fields(JobRequest):
        check = _check_of(f)
        if not f.metadata["templated"] or check is None:
            continue
        value = getattr(job, f.name)
        if skip_templates and holds_template(value):
            continue
        if f.name in ("job_queue", "job_definition") and value is None:
            _check_needed(job, f.name, skip_templates=skip_templates)
            continue
        check(value)
    if not skip_templates:
        job.backend = check_backend_name(job.backend)
        poll = job.poll_interval
        if poll is None:
            poll = default_poll_interval(job.backend)
        if isinstance(poll, str):  # a rendered template such as "{{ params.poll_interval }}"
            try:
                poll = float(poll)
            except ValueError:
                raise JobSpecError(f"poll_interval must be a number of seconds, got {job.poll_interval!r}.") from None
        job.poll_interval = check_poll_interval(poll)


def _check_needed(job: Any, field: str, *, skip_templates: bool) -> None:
    """A missing job_queue or job_definition is fine for a backend without queues (local) only."""
    if skip_templates and is_template(job.backend):
        return  # known once rendered
    from airflow_gpu.jobs.backend import backend_class

    if backend_class(check_backend_name(job.backend)).needs_queue:
        raise JobSpecError(
            f"{field} is required with backend={job.backend!r}: pass the Batch "
            f"{field.replace('_', ' ')} name or ARN (airflow-gpu batch-setup prints both), or use backend='local'."
        )


__all__ = ["JobRequest", "check_job_fields", "default_poll_interval", "job_spec"]
