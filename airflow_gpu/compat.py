"""What differs between the Airflow versions the package accepts, in one place.

The floor is Airflow 3.2: it is the oldest version the suite passes on (3.0 and 3.1 lack
Task SDK names the package imports, and 3.1's trigger runner cannot serve a trigger's
Task SDK call made from a thread). Importing the Airflow wing on an older Airflow fails
here with a message that says so, instead of an ImportError from deep inside.
"""

from __future__ import annotations

import airflow
from packaging.version import Version

MINIMUM_AIRFLOW = (3, 2)

AIRFLOW_VERSION = Version(airflow.__version__)

if AIRFLOW_VERSION.release[:2] < MINIMUM_AIRFLOW:
    raise ImportError(
        f"airflow-gpu needs Apache Airflow {'.'.join(map(str, MINIMUM_AIRFLOW))} or newer; this environment has "
        f"{airflow.__version__}. Upgrade it: pip install 'apache-airflow>={'.'.join(map(str, MINIMUM_AIRFLOW))},<4'."
    )

#: The triggerer calls a trigger's on_kill() when the user clears or marks its task from 3.3.0 on
#: (apache/airflow#65590). Before that it only cancels run() and calls cleanup(), exactly as it
#: does when it shuts down or hands the trigger to another triggerer.
TRIGGERER_CALLS_ON_KILL = AIRFLOW_VERSION.release[:2] >= (3, 3)
