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
        url = getattr(operator, self.attr, None)
        if url:
            return url
        try:
            from airflow.sdk import XCom

            return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""
        except Exception:  # no XCom access outside a task (e.g. in tests)
            return ""


class BatchJobLink(_JobLink):
    """The job's page in the AWS Batch console."""

    name = "AWS Batch job"
    attr = "_job_url"


class CloudWatchLogsLink(_JobLink):
    """The job's log stream in the CloudWatch console."""

    name = "CloudWatch log stream"
    attr = "_log_url"
