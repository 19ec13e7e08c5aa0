"""How the deployment's Airflow configuration shapes airflow-gpu's defaults."""

from __future__ import annotations

import configparser
import os


def default_deferrable() -> bool:
    """True, unless the deployment deliberately sets ``[operators] default_deferrable``.

    Airflow ships that option as "false", and ``airflow db migrate`` writes every
    default into a generated airflow.cfg, so neither ``conf.getboolean(...,
    fallback=True)`` nor "the file has the option" can tell a choice from the
    default. A deliberate setting is one made in the environment
    (``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE``, ``_CMD``, ``_SECRET``) or a file
    value that differs from Airflow's default; otherwise a GPU job defers.
    """
    from airflow.sdk import conf

    section, key = "operators", "default_deferrable"
    if any(os.environ.get(f"AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE{s}") for s in ("", "_CMD", "_SECRET")):
        return conf.getboolean(section, key, fallback=True)
    try:
        in_file = configparser.ConfigParser.get(conf, section, key, raw=True, fallback=None)
        shipped = conf.get_default_value(section, key)
    except Exception:
        return True
    if in_file is not None and str(in_file).strip().lower() != str(shipped).strip().lower():
        return conf.getboolean(section, key, fallback=True)
    return True


#: Where a terminal (no Airflow config) and a deployment without ``[airflow_gpu] staging_prefix`` look.
STAGING_PREFIX_ENV = "AIRFLOW_GPU_STAGING_PREFIX"


def staging_prefix(
    explicit: str | None = None, *, airflow_config: bool = True, local_default: str | None = None
) -> str:
    """Where shipped functions and scripts are staged: the task's ``staging_prefix``, else
    ``[airflow_gpu] staging_prefix`` (``AIRFLOW__AIRFLOW_GPU__STAGING_PREFIX``), else $AIRFLOW_GPU_STAGING_PREFIX,
    else ``local_default`` (a folder, given for the local backend, whose jobs run on this machine).
    A local folder is made absolute against this process's folder, as a shell would.

    ``airflow_config=False`` (the terminal) never reads Airflow's configuration, which needs an Airflow home.
    """
    from airflow_gpu.jobs.spec import JobSpecError

    value = explicit
    if not value and airflow_config:
        from airflow.sdk import conf

        value = conf.get("airflow_gpu", "staging_prefix", fallback=None)
    value = value or os.environ.get(STAGING_PREFIX_ENV) or local_default
    if not value or not str(value).strip():
        where = (
            "pass staging_prefix= to the task, or set [airflow_gpu] staging_prefix"
            if airflow_config
            else "pass --staging-prefix"
        )
        raise JobSpecError(
            f"No staging prefix: code shipped to a GPU job must be uploaded somewhere the job can read. {where} "
            f"(or ${STAGING_PREFIX_ENV}) to an s3://bucket/prefix/ the job's role can read and write "
            "(or a local folder, with the local backend)."
        )
    return local_path_or_uri(str(value).strip())


def price_table(*, airflow_config: bool = True):
    """The prices jobs are billed at: ``[airflow_gpu] prices`` (a JSON file), else $AIRFLOW_GPU_PRICES,
    else the table shipped with the package; ``[airflow_gpu] spot_price_share`` overrides the Spot share.

    ``airflow_config=False`` (the terminal) reads only the environment.
    """
    from airflow_gpu.jobs.cost import PRICES_ENV, SHIPPED, check_spot_share, read_price_file

    path = share = None
    if airflow_config:
        from airflow.sdk import conf

        path = conf.get("airflow_gpu", "prices", fallback=None)
        share = conf.get("airflow_gpu", "spot_price_share", fallback=None)
    path = path or os.environ.get(PRICES_ENV)
    share = share or os.environ.get("AIRFLOW_GPU_SPOT_PRICE_SHARE")
    spot_share = None if share in (None, "") else check_spot_share(share, where="[airflow_gpu] spot_price_share")
    if path and str(path).strip():
        return read_price_file(str(path).strip(), spot_share=spot_share)
    if spot_share is not None:
        from dataclasses import replace

        return replace(SHIPPED, spot_share=spot_share)
    return SHIPPED


def local_path_or_uri(value: str) -> str:
    """An s3:// URI as it is; a local path made absolute against this process's folder (what a shell means),
    keeping a trailing slash."""
    if "://" in value:
        return value
    absolute = os.path.abspath(os.path.expanduser(value))
    return absolute + ("/" if value.endswith("/") and not absolute.endswith("/") else "")


def local_staging_default(*, airflow_home: bool) -> str:
    """The local backend's staging folder: under the Airflow home for a task, beside the local job
    records for the terminal (which has no Airflow home)."""
    if airflow_home:
        home = os.environ.get("AIRFLOW_HOME") or os.path.join("~", "airflow")
        return os.path.join(os.path.expanduser(home), "airflow-gpu", "staging") + "/"
    from airflow_gpu.jobs.local.backend import default_state_dir

    return str(default_state_dir() / "staging") + "/"
