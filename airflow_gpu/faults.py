"""One vocabulary for retries and AWS errors, written once for both wings: the standard library only.

The Airflow wing's pollers and the worker's storage both retry failed calls and both read the
codes AWS answers with. The rules they must agree on live here, beside :mod:`airflow_gpu.contract`
and importing neither wing: how long to pause after the n-th fault in a row, which code a
botocore error carries, and which codes mean that an S3 object is simply not there.
"""

from __future__ import annotations

import random

#: The codes S3 answers for an object that is not there: GetObject says NoSuchKey; HeadObject,
#: which has no body to carry a code, says 404 (NotFound on some stores).
S3_ABSENT = frozenset({"NoSuchKey", "404", "NotFound"})


def jittered_delay(level: int, base: float, cap: float) -> float:
    """The pause after the ``level``-th fault in a row: full jitter under a ceiling that doubles
    from ``base`` up to ``cap``. A fresh draw each time, so callers that failed together do not
    retry together."""
    return random.uniform(0, min(cap, base * 2**level))


def error_code(exc: BaseException) -> str:
    """The code of a botocore ``ClientError`` (``response["Error"]["Code"]``); "" for any other error."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return str(error.get("Code", "")) if isinstance(error, dict) else ""
