"""The start trigger's former home, kept importable on purpose: Trigger rows and serialized DAGs that an
earlier release wrote name ``airflow_gpu.starting.GpuBatchStartTrigger``, and Airflow imports that path
to run them. The trigger lives in :mod:`airflow_gpu.triggers.start`."""

from airflow_gpu.triggers.start import CLASSPATH, GpuBatchStartTrigger, start_trigger_args

__all__ = ["CLASSPATH", "GpuBatchStartTrigger", "start_trigger_args"]
