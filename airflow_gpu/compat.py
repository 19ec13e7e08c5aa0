"""The oldest Airflow the package accepts, checked when the Airflow wing is imported.

The floor is Airflow 3.3, the first whose triggerer calls a trigger's on_kill() when the user
clears or marks its task (apache/airflow#65590): before it, the triggerer only cancels run() and
calls cleanup(), exactly as it does when it shuts down or hands the trigger to another
triggerer, so a cleared task's GPU job could not be told from one that must live on. 3.0 and
3.1 also lack Task SDK names the package imports. Importing the Airflow wing on an older Airflow
fails here with a message that says so, instead of an ImportError from deep inside.
"""

from __future__ import annotations

import airflow
from packaging.version import Version

MINIMUM_AIRFLOW = (3, 3)

AIRFLOW_VERSION = Version(airflow.__version__)

if AIRFLOW_VERSION.release[:2] < MINIMUM_AIRFLOW:
    raise ImportError(
        f"airflow-gpu needs Apache Airflow {'.'.join(map(str, MINIMUM_AIRFLOW))} or newer; this environment has "
        f"{airflow.__version__}. Upgrade it: pip install 'apache-airflow>={'.'.join(map(str, MINIMUM_AIRFLOW))},<4'."
    )
