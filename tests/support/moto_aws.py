"""A real AWS wire protocol for tests: a moto server on loopback, plus levers on its Batch jobs.

moto's in-process decorator cannot intercept aiobotocore, so every test talks HTTP
to a ``ThreadedMotoServer``. Because that server runs in the test process, the test
can reach into moto's backend objects to drive a job through its lifecycle, the way
AWS Batch would: RUNNABLE while no GPU is free, RUNNING, then SUCCEEDED or FAILED
with a status reason and an exit code.

Nothing here is imported by the package; benchmarks may import it from tests/.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
from moto.batch import models as batch_models
from moto.batch.exceptions import ClientException
from moto.batch_simple import models as batch_simple_models
from moto.core.exceptions import JsonRESTError
from moto.core.responses import BaseResponse
from moto.logs import exceptions as logs_exceptions
from moto.logs import models as logs_models
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCOUNT = "123456789012"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}

LIVE_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")


class Throttled(JsonRESTError):
    """What Batch answers when a caller exceeds its request rate (HTTP 429)."""

    code = 429

    def __init__(self) -> None:
        super().__init__("TooManyRequestsException", "Too Many Requests")


class Refused(JsonRESTError):
    """What Batch answers a caller it refuses: AccessDeniedException, ExpiredTokenException (HTTP 403)."""

    code = 403

    def __init__(self, error_type: str) -> None:
        super().__init__(error_type, f"{error_type} (refused by the test)")


@dataclass
class BatchCallLog:
    """Batch API calls seen by the server: counts per action, and the ids of each DescribeJobs."""

    calls: Counter = field(default_factory=Counter)
    describe_batches: list[tuple[float, list[str]]] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    terminated: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Every call of every service, as "service:action" in lower case ("batch:createjobqueue",
    # "logs:createloggroup"), so a test can prove a command wrote nothing.
    aws_calls: Counter = field(default_factory=Counter)
    aws_call_order: list[str] = field(default_factory=list)
    # The same calls with the time.monotonic() they reached the server, to check a call rate.
    aws_call_times: list[tuple[float, str]] = field(default_factory=list)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.describe_batches.clear()
            self.submitted.clear()
            self.terminated.clear()
            self.aws_calls.clear()
            self.aws_call_order.clear()
            self.aws_call_times.clear()

    def writes(self, services: tuple[str, ...] = ("batch", "logs")) -> Counter:
        """Calls that may change something (anything but Describe*, List*, Get*) to ``services``."""
        with self.lock:
            return Counter({key: n for key, n in self.aws_calls.items() if _is_write(key, services)})

    def call_times(self, key: str) -> list[float]:
        """When each ``service:action`` call reached the server (time.monotonic())."""
        with self.lock:
            return [at for at, k in self.aws_call_times if k == key]

    def write_order(self, services: tuple[str, ...] = ("batch", "logs")) -> list[str]:
        """The same calls, in the order the server received them."""
        with self.lock:
            return [key for key in self.aws_call_order if _is_write(key, services)]


def _is_write(key: str, services: tuple[str, ...]) -> bool:
    service, action = key.split(":", 1)
    return service in services and not action.startswith(("describe", "list", "get"))


# The AWS Batch rules for in-place compute environment updates (see _install_aws_rules).
SCALING_UPDATE_FIELDS = {"minvCpus", "maxvCpus", "desiredvCpus"}
INFRASTRUCTURE_UPDATE_STRATEGIES = ("BEST_FIT_PROGRESSIVE", "SPOT_CAPACITY_OPTIMIZED", "SPOT_PRICE_CAPACITY_OPTIMIZED")
SERVICE_LINKED_ROLE = "/AWSServiceRoleForBatch"


class BatchJobDriver:
    """Drives moto's Batch jobs by hand.

    moto's docker-less Batch finishes every job the instant it is submitted. While
    ``hold`` is on, new jobs stay in ``hold_status`` instead, until the test moves
    them with ``set_status``; and TerminateJob fails a held job with its reason, as
    AWS Batch does (moto's own terminate only flags a docker thread that never runs).
    """

    def __init__(self, log: BatchCallLog) -> None:
        self.log = log
        self.hold_status: str | None = None
        self.throttle_until = 0.0
        self.throttle_actions: set[str] = {"describejobs"}
        self.settle_describes = 0
        self.settling: dict[str, list] = {}  # arn -> [transitional status, describes left]
        self.answers: dict[str, Callable[[list[str]], str]] = {}
        self.placements: dict[str, str] = {}  # job id -> container instance ARN (see place)
        self.refusals: dict[str, str] = {}  # action -> error type answered with HTTP 403

    def answer(self, action: str, reply: Callable[[list[str]], str]) -> None:
        """Answer a Batch action (only ``describejobs`` so far) with ``reply(job ids)``'s JSON text.

        For benchmarks whose server must never set the pace; the call is still counted.
        """
        assert action == "describejobs", action
        self.answers[action] = reply

    # -- levers ---------------------------------------------------------------
    def refuse(self, action: str, error_type: str) -> None:
        """Answer a Batch action (``submitjob``, ``describejobs``...) with HTTP 403 ``error_type``."""
        self.refusals[action] = error_type

    def hold(self, status: str = "RUNNING") -> None:
        """New jobs stay in ``status`` until released."""
        assert status in LIVE_STATES, status
        self.hold_status = status

    def release_hold(self) -> None:
        self.hold_status = None

    def place(self, job_id: str, container_instance_arn: str) -> None:
        """Report ``job_id`` as running on that ECS container instance, as AWS Batch does in DescribeJobs
        (moto's Batch links no job to an instance; it writes "TBD")."""
        self.placements[job_id] = container_instance_arn

    def throttle(self, seconds: float, actions: tuple[str, ...] = ("describejobs",)) -> None:
        """Answer the given Batch actions with HTTP 429 TooManyRequestsException for a while."""
        self.throttle_actions = set(actions)
        self.throttle_until = time.monotonic() + seconds

    def settle_after(self, describes: int) -> None:
        """Make compute environments and queues report CREATING/UPDATING for this many describes after each change.

        moto makes them VALID at once; AWS takes a while, and callers must wait for VALID.
        """
        self.settle_describes = describes
        self.settling.clear()

    def _changed(self, arn: str, status: str) -> None:
        if self.settle_describes:
            self.settling[arn] = [status, self.settle_describes]

    def _settle(self, items: list[dict[str, Any]], arn_key: str) -> list[dict[str, Any]]:
        for item in items:
            pending = self.settling.get(item.get(arn_key))
            if pending and pending[1] > 0:
                item["status"] = pending[0]
                pending[1] -= 1
        return items

    def job(self, job_id: str) -> batch_models.Job:
        return batch_models.batch_backends[ACCOUNT][REGION]._jobs[job_id]

    def jobs(self) -> dict[str, batch_models.Job]:
        return dict(batch_models.batch_backends[ACCOUNT][REGION]._jobs)

    def status(self, job_id: str) -> str:
        return self.job(job_id).status

    def set_status(
        self,
        job_id: str,
        status: str,
        *,
        reason: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        """Move a job to ``status``; terminal states take a status reason and a container exit code.

        A live state takes a reason too: AWS Batch writes why it cannot place a RUNNABLE job
        (``MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - ...``) into the job's statusReason.
        """
        job = self.job(job_id)
        if status in ("SUCCEEDED", "FAILED"):
            if not job.attempts:
                job._start_attempt()
            job.exit_code = exit_code if exit_code is not None else (0 if status == "SUCCEEDED" else 1)
            if reason is not None:
                job.job_stopped_reason = reason
            if job.latest_attempt is not None:
                job.latest_attempt["container"]["exitCode"] = job.exit_code
                if reason is not None:
                    job.latest_attempt["statusReason"] = reason
            job._mark_stopped(success=status == "SUCCEEDED")
            return
        assert status in LIVE_STATES, status
        if status in ("STARTING", "RUNNING") and not job.attempts:
            job.job_started_at = datetime.now()
            job._start_attempt()
        job.status = status
        # moto reports job_stopped_reason as statusReason; a live job's reason lasts until the next move.
        job.job_stopped_reason = reason

    def backdate(self, job_id: str, *, queued_s: float, ran_s: float) -> None:
        """Give an ended job a queue wait and a run time (moto's take milliseconds): created
        ``queued_s + ran_s`` before it stopped, started ``ran_s`` before."""
        from datetime import timedelta

        job = self.job(job_id)
        assert job.status in ("SUCCEEDED", "FAILED"), job.status
        stopped = job.job_stopped_at
        job.job_started_at = stopped - timedelta(seconds=ran_s)
        job.job_created_at = job.job_started_at - timedelta(seconds=queued_s)
        stopped_ms = batch_models.datetime2int_milliseconds(stopped)
        for attempt in job.attempts:
            attempt["startedAt"] = stopped_ms - int(ran_s * 1000)
            attempt["stoppedAt"] = stopped_ms

    def wait_for_jobs(self, count: int, timeout: float = 30.0, status: str | None = None) -> list[str]:
        """Block until at least ``count`` jobs exist (optionally in ``status``); return their ids."""
        deadline = time.monotonic() + timeout
        while True:
            ids = [j for j, job in self.jobs().items() if status is None or job.status == status]
            if len(ids) >= count:
                return ids
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} jobs{' in ' + status if status else ''}, saw {len(ids)}")
            time.sleep(0.05)

    # -- hooks installed into moto -------------------------------------------
    def _finish_or_hold(self, original: Callable, backend: Any, include_start_attempt: bool, job: Any) -> None:
        if self.hold_status is None:
            return original(backend, include_start_attempt=include_start_attempt, job=job)
        backend.backend._jobs[job.job_id] = job
        job.log_stream_name = job._stream_name
        job.status = self.hold_status
        if self.hold_status in ("STARTING", "RUNNING"):
            job.job_started_at = datetime.now()
            if include_start_attempt:
                job._start_attempt()

    def _terminate(self, original: Callable, job: Any, reason: str) -> None:
        with self.log.lock:
            self.log.terminated.append((job.job_id, reason))
        original(job, reason)
        if not job.job_stopped and job.status in LIVE_STATES:
            job.job_stopped_reason = reason
            if job.attempts and job.latest_attempt is not None:
                job.exit_code = 143  # SIGTERM, as the ECS agent reports for a stopped container
            job._mark_stopped(success=False)


@dataclass
class MotoAws:
    """A running moto server and what a test needs to talk to it."""

    endpoint_url: str
    region: str
    batch: BatchJobDriver
    log: BatchCallLog

    def client(self, service: str):
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def reset(self) -> None:
        """Forget every resource and counter, and put Batch back into docker-less mode."""
        _post(self.endpoint_url + "/moto-api/reset", b"")
        _post(self.endpoint_url + "/moto-api/config", json.dumps({"batch": {"use_docker": False}}).encode())
        self.log.reset()
        self.batch.release_hold()
        self.batch.throttle_until = 0.0
        self.batch.settle_after(0)
        self.batch.answers.clear()
        self.batch.placements.clear()
        self.batch.refusals.clear()

    def create_gpu_batch_environment(
        self, name: str = "gpu", *, gpus: int = 1, vcpus: int = 4, memory_mib: int = 15000, compute_type: str = "EC2"
    ) -> dict[str, str]:
        """A managed GPU compute environment, a job queue and a job definition, as batch-setup would make them.

        ``compute_type="SPOT"`` makes it a Spot compute environment."""
        iam = self.client("iam")
        ec2 = self.client("ec2")
        batch = self.client("batch")
        trust = json.dumps({"Version": "2012-10-17", "Statement": []})
        service_role = iam.create_role(RoleName=f"{name}-batch-service", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        instance_role = iam.create_instance_profile(InstanceProfileName=f"{name}-ecs-instance")["InstanceProfile"][
            "Arn"
        ]
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
        sg = ec2.create_security_group(GroupName=f"{name}-sg", Description="batch", VpcId=vpc)["GroupId"]
        ce = batch.create_compute_environment(
            computeEnvironmentName=f"{name}-ce",
            type="MANAGED",
            state="ENABLED",
            computeResources={
                "type": compute_type,
                "minvCpus": 0,
                "maxvCpus": 64,
                "instanceTypes": ["g5.xlarge"],
                "subnets": [subnet],
                "securityGroupIds": [sg],
                "instanceRole": instance_role,
                "ec2Configuration": [{"imageType": "ECS_AL2023_NVIDIA"}],
            },
            serviceRole=service_role,
        )["computeEnvironmentArn"]
        queue = batch.create_job_queue(
            jobQueueName=f"{name}-queue",
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}],
        )["jobQueueArn"]
        definition = batch.register_job_definition(
            jobDefinitionName=f"{name}-als",
            type="container",
            containerProperties={
                "image": "example.com/airflow-gpu-worker:latest",
                "command": ["airflow-gpu-worker", "als"],
                "resourceRequirements": [
                    {"type": "GPU", "value": str(gpus)},
                    {"type": "VCPU", "value": str(vcpus)},
                    {"type": "MEMORY", "value": str(memory_mib)},
                ],
            },
        )["jobDefinitionArn"]
        return {
            "compute_environment": ce,
            "job_queue": f"{name}-queue",
            "job_queue_arn": queue,
            "job_definition": f"{name}-als",
            "job_definition_arn": definition,
        }

    def register_container_instance(self, compute_environment: str, instance_type: str) -> str:
        """An EC2 instance of ``instance_type`` joined to the compute environment's ECS cluster, as Batch
        scales one out; returns its container instance ARN (for :meth:`BatchJobDriver.place`)."""
        batch, ec2, ecs = self.client("batch"), self.client("ec2"), self.client("ecs")
        environment = batch.describe_compute_environments(computeEnvironments=[compute_environment])[
            "computeEnvironments"
        ][0]
        image = ec2.describe_images()["Images"][0]["ImageId"]
        instance = ec2.run_instances(ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1)["Instances"][0]
        document = json.dumps(
            {"instanceId": instance["InstanceId"], "instanceType": instance_type, "region": self.region}
        )
        registered = ecs.register_container_instance(
            cluster=environment["ecsClusterArn"], instanceIdentityDocument=document
        )
        return registered["containerInstance"]["containerInstanceArn"]


def _post(url: str, body: bytes) -> None:
    req = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


_installed: MotoAws | None = None


def _install_hooks(driver: BatchJobDriver, log: BatchCallLog) -> None:
    """Wrap moto's Batch handlers so the test can count calls, hold jobs and throttle."""
    simple = batch_simple_models.BatchSimpleBackend
    original_finish = simple._mark_job_as_finished
    simple._mark_job_as_finished = lambda self, include_start_attempt, job: driver._finish_or_hold(
        original_finish, self, include_start_attempt, job
    )

    original_describe = batch_models.Job.describe

    def describe(job: Any) -> dict[str, Any]:
        # moto drops the container's exit code and log configuration from the full description;
        # AWS Batch reports both.
        result = original_describe(job)
        if job.exit_code is not None and isinstance(result.get("container"), dict):
            result["container"]["exitCode"] = job.exit_code
        log_config = (job.job_definition.container_properties or {}).get("logConfiguration")
        if log_config and isinstance(result.get("container"), dict):
            result["container"]["logConfiguration"] = log_config
        # moto leaves out the container's resource requirements; AWS reports the definition's, overridden by the job's.
        if isinstance(result.get("container"), dict):
            requirements = {
                r["type"]: r for r in (job.job_definition.container_properties or {}).get("resourceRequirements") or ()
            }
            requirements.update(
                {r["type"]: r for r in (job.container_overrides or {}).get("resourceRequirements") or ()}
            )
            if requirements:
                result["container"]["resourceRequirements"] = list(requirements.values())
        placed = driver.placements.get(job.job_id)
        if placed:
            for container in [result.get("container")] + [a.get("container") for a in result.get("attempts") or ()]:
                if isinstance(container, dict):
                    container["containerInstanceArn"] = placed
        return result

    batch_models.Job.describe = describe

    original_terminate = batch_models.Job.terminate
    batch_models.Job.terminate = lambda job, reason: driver._terminate(original_terminate, job, reason)

    original_call_action = BaseResponse.call_action

    def call_action(self: Any) -> Any:
        # One hook at moto's generic dispatch, not one per handler: handler names change between
        # moto releases (5.2.6 renamed BatchResponse.submitjob to submit_job), the action names do not.
        action = self._get_action().lower()
        if self.service_name == "batch" and action == "tags":  # one URL, three operations
            action = {"GET": "listtagsforresource", "POST": "tagresource", "DELETE": "untagresource"}.get(
                self.method, action
            )
        with log.lock:
            log.aws_calls[f"{self.service_name}:{action}"] += 1
            log.aws_call_order.append(f"{self.service_name}:{action}")
            log.aws_call_times.append((time.monotonic(), f"{self.service_name}:{action}"))
        if self.service_name != "batch":
            return original_call_action(self)
        if action in driver.refusals:
            error = Refused(driver.refusals[action])
            return error.code, {**dict(error.get_headers() or []), "status": str(error.code)}, error.get_body()
        if action in driver.throttle_actions and time.monotonic() < driver.throttle_until:
            with log.lock:
                log.calls[action + ":throttled"] += 1
            error = Throttled()
            return error.code, {**dict(error.get_headers() or []), "status": str(error.code)}, error.get_body()
        if action in COUNTED_BATCH_ACTIONS:
            _count_batch_call(self, action, log)
        if action in driver.answers:
            return (
                200,
                {"Content-Type": "application/json"},
                driver.answers[action](list(self._get_param("jobs") or [])),
            )
        result = original_call_action(self)
        if action in TIME_LIMIT_ACTION_PARAMS:
            _keep_time_limit_actions(self, TIME_LIMIT_ACTION_PARAMS[action])
        return result

    BaseResponse.call_action = call_action
    _count_s3_puts(log)
    _install_aws_rules(driver)
    _install_logs_rules()


def _count_s3_puts(log: BatchCallLog) -> None:
    """moto's S3 answers through its own dispatch, not ``call_action``: count its single-request
    PUTs of objects there, as ``s3:putobject`` (what a test of "uploaded once" counts)."""
    original = S3Response.put_object

    def put_object(self: Any) -> Any:
        with log.lock:
            log.aws_calls["s3:putobject"] += 1
            log.aws_call_order.append("s3:putobject")
            log.aws_call_times.append((time.monotonic(), "s3:putobject"))
        return original(self)

    S3Response.put_object = put_object


def _install_logs_rules() -> None:
    """Teach moto's CloudWatch Logs what AWS does in FilterLogEvents:

    - naming a log stream that does not exist fails the whole call with ResourceNotFoundException
      (moto ignores the name);
    - events of all streams come interleaved, sorted by timestamp (AWS has ignored ``interleaved=false``
      since 2019; moto honours it and defaults to false).
    """
    original = logs_models.LogsBackend.filter_log_events

    def filter_log_events(
        self, log_group_name, log_stream_names, start_time, end_time, limit, next_token, filter_pattern, interleaved
    ):
        group = self.groups.get(log_group_name)
        if group is not None and log_stream_names:
            if any(name not in group.streams for name in log_stream_names):
                raise logs_exceptions.ResourceNotFoundException("The specified log stream does not exist.")
        return original(
            self, log_group_name, log_stream_names, start_time, end_time, limit, next_token, filter_pattern, True
        )

    logs_models.LogsBackend.filter_log_events = filter_log_events


def _install_aws_rules(driver: BatchJobDriver) -> None:
    """Teach moto's Batch the AWS rules it skips, so set-up and tear-down code meets them in tests.

    - UpdateComputeEnvironment: moto ignores computeResources. AWS applies them: min/max/desired
      vCPUs at any time (a scaling update); anything else only as an infrastructure update, which
      needs the AWSServiceRoleForBatch service-linked role and a BEST_FIT_PROGRESSIVE or SPOT_*
      allocation strategy; and a compute environment never switches between the service-linked
      role and an ordinary one.
    - DeleteJobQueue needs the queue DISABLED; DeleteComputeEnvironment needs it DISABLED and
      attached to no job queue.
    - With ``settle_after(n)``, compute environments and queues report CREATING/UPDATING for n
      describes after each change, as AWS does for a while.
    """
    backend_cls = batch_models.BatchBackend

    original_update = backend_cls.update_compute_environment

    def update_compute_environment(self, compute_environment_name, state, compute_resources, service_role):
        env = self.get_compute_environment(compute_environment_name)
        if env is not None:
            if service_role is not None and service_role.endswith(SERVICE_LINKED_ROLE) != env.service_role.endswith(
                SERVICE_LINKED_ROLE
            ):
                raise ClientException(
                    "A compute environment cannot switch between a service-linked role and a regular IAM role"
                )
            infrastructure = set(compute_resources or {}) - SCALING_UPDATE_FIELDS
            if infrastructure:
                strategy = env.compute_resources.get("allocationStrategy", "BEST_FIT")
                if service_role is not None and service_role != env.service_role:
                    raise ClientException("serviceRole can only be changed in a scaling update")
                if (
                    not env.service_role.endswith(SERVICE_LINKED_ROLE)
                    or strategy not in INFRASTRUCTURE_UPDATE_STRATEGIES
                ):
                    raise ClientException(
                        f"Updating {sorted(infrastructure)} requires an infrastructure update, which needs the "
                        "AWSServiceRoleForBatch service-linked role and allocation strategy BEST_FIT_PROGRESSIVE, "
                        "SPOT_CAPACITY_OPTIMIZED or SPOT_PRICE_CAPACITY_OPTIMIZED"
                    )
            if compute_resources:
                merged = {**env.compute_resources, **compute_resources}
                self._validate_compute_resources(merged)
        result = original_update(self, compute_environment_name, state, compute_resources, service_role)
        if env is not None and compute_resources:
            env.compute_resources.update(compute_resources)
            driver._changed(env.arn, "UPDATING")
        elif env is not None and state is not None:
            driver._changed(env.arn, "UPDATING")
        return result

    backend_cls.update_compute_environment = update_compute_environment

    original_delete_queue = backend_cls.delete_job_queue

    def delete_job_queue(self, queue_name):
        queue = self.get_job_queue(queue_name)
        if queue is not None and queue.state != "DISABLED":
            raise ClientException(f"Job queue {queue.name} must be DISABLED before it can be deleted")
        return original_delete_queue(self, queue_name)

    backend_cls.delete_job_queue = delete_job_queue

    original_delete_ce = backend_cls.delete_compute_environment

    def delete_compute_environment(self, compute_environment_name):
        env = self.get_compute_environment(compute_environment_name)
        if env is not None:
            if env.state != "DISABLED":
                raise ClientException(f"Compute environment {env.name} must be DISABLED before it can be deleted")
            users = [q.name for q in self._job_queues.values() if env in q.environments]
            if users:
                raise ClientException(f"Compute environment {env.name} is still attached to job queue(s) {users}")
        return original_delete_ce(self, compute_environment_name)

    backend_cls.delete_compute_environment = delete_compute_environment

    original_create_ce = backend_cls.create_compute_environment

    def create_compute_environment(self, *args, **kwargs):
        env = original_create_ce(self, *args, **kwargs)
        driver._changed(env.arn, "CREATING")
        return env

    backend_cls.create_compute_environment = create_compute_environment

    original_create_queue = backend_cls.create_job_queue

    def create_job_queue(self, *args, **kwargs):
        queue = original_create_queue(self, *args, **kwargs)
        driver._changed(queue.arn, "CREATING")
        return queue

    backend_cls.create_job_queue = create_job_queue

    original_update_queue = backend_cls.update_job_queue

    def update_job_queue(self, *args, **kwargs):
        name, arn = original_update_queue(self, *args, **kwargs)
        driver._changed(arn, "UPDATING")
        return name, arn

    backend_cls.update_job_queue = update_job_queue

    original_queue_describe = batch_models.JobQueue.describe

    def describe_queue(queue: Any) -> dict[str, Any]:
        result = original_queue_describe(queue)
        result["jobStateTimeLimitActions"] = list(getattr(queue, "job_state_time_limit_actions", []))
        return result

    batch_models.JobQueue.describe = describe_queue

    original_describe_ces = backend_cls.describe_compute_environments
    backend_cls.describe_compute_environments = lambda self, environments=None: driver._settle(
        original_describe_ces(self, environments), "computeEnvironmentArn"
    )
    original_describe_queues = backend_cls.describe_job_queues
    backend_cls.describe_job_queues = lambda self, job_queues=None: driver._settle(
        original_describe_queues(self, job_queues), "jobQueueArn"
    )


# moto drops a queue's jobStateTimeLimitActions; AWS keeps and reports them. Create and update
# replace the whole list, as in AWS. Action -> the parameter that names the queue.
TIME_LIMIT_ACTION_PARAMS = {"createjobqueue": "jobQueueName", "updatejobqueue": "jobQueue"}

COUNTED_BATCH_ACTIONS = ("describejobs", "submitjob", "listjobs", "terminatejob", "canceljob")
SUBMIT_PARAMS = (
    "jobName",
    "jobQueue",
    "jobDefinition",
    "containerOverrides",
    "tags",
    "propagateTags",
    "retryStrategy",
    "timeout",
    "parameters",
    # Recorded here only: moto 5.2.6 neither stores nor describes a job's share or priority.
    "shareIdentifier",
    "schedulingPriorityOverride",
)


def _count_batch_call(response: Any, action: str, log: BatchCallLog) -> None:
    with log.lock:
        log.calls[action] += 1
        if action == "describejobs":
            log.describe_batches.append((time.monotonic(), list(response._get_param("jobs") or [])))
        elif action == "submitjob":
            log.submitted.append({name: response._get_param(name) for name in SUBMIT_PARAMS})


def _keep_time_limit_actions(response: Any, name_param: str) -> None:
    actions = response._get_param("jobStateTimeLimitActions")
    if actions is not None:
        queue = response.batch_backend.get_job_queue(response._get_param(name_param))
        if queue is not None:
            queue.job_state_time_limit_actions = list(actions)


class HarnessMismatch(RuntimeError):
    """The installed moto lacks an internal this harness patches: one line naming the versions and the fix."""


# Every moto internal the harness reaches into, in one place: (owner, attribute, parameters the
# harness passes, or None where it only reads or wraps the attribute as a whole).
MOTO_INTERNALS: tuple[tuple[Any, str, tuple[str, ...] | None], ...] = (
    (BaseResponse, "call_action", ("self",)),
    (BaseResponse, "_get_action", None),
    (BaseResponse, "_get_param", None),
    (batch_simple_models.BatchSimpleBackend, "_mark_job_as_finished", ("self", "include_start_attempt", "job")),
    (batch_models.Job, "describe", ("self",)),
    (batch_models.Job, "terminate", ("self", "reason")),
    (batch_models.Job, "_start_attempt", None),
    (batch_models.Job, "_mark_stopped", None),
    (batch_models.JobQueue, "describe", ("self",)),
    (
        batch_models.BatchBackend,
        "update_compute_environment",
        ("self", "compute_environment_name", "state", "compute_resources", "service_role"),
    ),
    (batch_models.BatchBackend, "delete_job_queue", ("self", "queue_name")),
    (batch_models.BatchBackend, "delete_compute_environment", ("self", "compute_environment_name")),
    (batch_models.BatchBackend, "create_compute_environment", None),
    (batch_models.BatchBackend, "create_job_queue", None),
    (batch_models.BatchBackend, "update_job_queue", None),
    (batch_models.BatchBackend, "describe_compute_environments", ("self", "environments")),
    (batch_models.BatchBackend, "describe_job_queues", ("self", "job_queues")),
    (batch_models.BatchBackend, "_validate_compute_resources", None),
    (batch_models.BatchBackend, "get_compute_environment", None),
    (batch_models.BatchBackend, "get_job_queue", None),
    (S3Response, "put_object", ("self",)),
    (
        logs_models.LogsBackend,
        "filter_log_events",
        (
            "self",
            "log_group_name",
            "log_stream_names",
            "start_time",
            "end_time",
            "limit",
            "next_token",
            "filter_pattern",
            "interleaved",
        ),
    ),
)


def locked_version(package: str, lock: Path = Path(__file__).resolve().parents[2] / "uv.lock") -> str:
    """The version of ``package`` that uv.lock pins ("not locked" where it pins none)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    for entry in tomllib.loads(lock.read_text()).get("package", []):
        if entry.get("name") == package:
            return str(entry.get("version"))
    return "not locked"


def check_moto_internals(internals: tuple[tuple[Any, str, tuple[str, ...] | None], ...] = MOTO_INTERNALS) -> None:
    """Refuse, in one line, a moto whose internals differ from what the harness patches."""
    import inspect

    import moto

    for owner, name, parameters in internals:
        where = f"{owner.__module__}.{owner.__qualname__}.{name}"
        attribute = getattr(owner, name, None)
        if attribute is None:
            problem = f"has no {where}"
        elif parameters is not None and tuple(inspect.signature(attribute).parameters) != parameters:
            problem = f"changed the parameters of {where} to {tuple(inspect.signature(attribute).parameters)}"
        else:
            continue
        raise HarnessMismatch(
            f"moto {moto.__version__} {problem}, which the test harness (tests/support/moto_aws.py) patches; "
            f"uv.lock pins moto {locked_version('moto')}: run `make test` (it installs the lock), "
            "or adapt MOTO_INTERNALS and the hooks to this moto"
        )


def start_moto() -> tuple[ThreadedMotoServer, MotoAws]:
    """Start one moto server on a free loopback port, with the Batch levers installed once per process."""
    global _installed
    if _installed is None:
        check_moto_internals()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    log = BatchCallLog()
    driver = BatchJobDriver(log)
    if _installed is None:
        originals = {(owner, name): owner.__dict__.get(name) for owner, name, _ in MOTO_INTERNALS}
        _install_hooks(driver, log)
        for (owner, name), original in originals.items():
            patched = owner.__dict__.get(name)
            if original is not None and patched is not original and callable(patched):
                # As functools.wraps would: what checks the internals later in this process (a unit
                # test after an integration test on one xdist worker) sees moto's own, not our hook.
                patched.__wrapped__ = original
        aws = MotoAws(endpoint_url=f"http://{host}:{port}", region=REGION, batch=driver, log=log)
        _installed = aws
    else:
        # Hooks are process-wide; a second server shares the first one's levers.
        aws = MotoAws(endpoint_url=f"http://{host}:{port}", region=REGION, batch=_installed.batch, log=_installed.log)
    aws.reset()
    return server, aws


def iter_describe_cycles(log: BatchCallLog, gap: float) -> Iterator[list[list[str]]]:
    """Group DescribeJobs calls into poll cycles: calls closer than ``gap`` seconds belong to one cycle."""
    cycle: list[list[str]] = []
    last = None
    for at, ids in list(log.describe_batches):
        if last is not None and at - last > gap and cycle:
            yield cycle
            cycle = []
        cycle.append(ids)
        last = at
    if cycle:
        yield cycle


def describe_rounds(log: BatchCallLog) -> list[list[list[str]]]:
    """Split the DescribeJobs calls into rounds: a round ends just before a call naming a job the round
    already named. A watcher that describes each watched job once a poll cycle makes one round a cycle
    however its calls are timed: under load, one cycle's last call and the next one's first can come closer
    together than any gap a grouping by time would need (seen: two cycles' calls 0.2 s apart at a 0.4 s poll)."""
    rounds: list[list[list[str]]] = []
    named: set[str] = set()
    for _, ids in list(log.describe_batches):
        if not rounds or named.intersection(ids):
            rounds.append([])
            named = set()
        rounds[-1].append(ids)
        named.update(ids)
    return rounds


def upload_folder(s3_client, folder, bucket: str, prefix: str) -> None:
    """Put every file under ``folder`` at s3://bucket/prefix/relative-path (creating the bucket)."""
    try:
        s3_client.create_bucket(Bucket=bucket)
    except s3_client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            s3_client.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}")
