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
