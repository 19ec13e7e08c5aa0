"""Idempotent AWS Batch GPU infrastructure: compute environment, job queue, job definition, log group.

``airflow-gpu batch-setup --config batch.toml`` reads a config (:mod:`.config`), looks
at what exists (:mod:`.state`), plans the difference (:mod:`.plan`) and applies it
(:mod:`.apply`). The same config run twice changes nothing the second time.

Imports are light on purpose: boto3 loads only when a plan talks to AWS.
"""

from __future__ import annotations

from .config import BatchSetupConfig, load_config, parse_config
from .errors import ConfigError, ProvisionError, WaitTimeout

__all__ = ["BatchSetupConfig", "ConfigError", "ProvisionError", "WaitTimeout", "load_config", "parse_config"]
