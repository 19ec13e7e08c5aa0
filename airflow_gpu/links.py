"""The operator's extra links: the job's page and its log stream, in the AWS consoles."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from airflow.sdk import BaseOperator, BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey


class _JobLink(BaseOperatorLink):
    """Read the URL from the operator (set while it ran) or from the XCom Airflow stored for this link."""

    attr: ClassVar[str]

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # The task runner calls this at the end of every run (a deferral too) and saves the
        # result as this link's XCom, which is what the UI shows. A run that learned no URL (a
        # resume without the trigger's event, e.g. after a trigger timeout) must hand back the
        # URL an earlier run of this try saved, not overwrite it with nothing.
        url = getattr(operator, self.attr, None)
        if url or getattr(operator, "_try_began_here", False):
            return url or ""  # a try's first run: its XComs were cleared, nothing was saved to find
        try:
            from airflow.sdk.execution_time.xcom import XCom  # the configured XCom backend, in a task
        except ImportError as exc:
            operator.log.warning("Cannot read the saved %s link: %s", self.name, exc)
            return ""
        try:
            return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""
        except Exception as exc:  # no XCom access outside a task runner
            operator.log.debug("No saved %s link: %s", self.name, exc)
            return ""


class BatchJobLink(_JobLink):
    """The job's page in the AWS Batch console."""

    name = "AWS Batch job"
    attr = "_job_url"


class CloudWatchLogsLink(_JobLink):
    """The job's log stream in the CloudWatch console."""

    name = "CloudWatch log stream"
    attr = "_log_url"
