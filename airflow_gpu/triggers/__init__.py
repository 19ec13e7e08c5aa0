"""The triggers, side by side: GpuBatchJobTrigger watches one job (watch.py); GpuBatchStartTrigger
submits a task's job from the triggerer, then watches it the same way (start.py).

``airflow_gpu.triggers.<class name>`` is the public path, and the one each trigger serializes.
"""

from airflow_gpu.triggers.start import GpuBatchStartTrigger  # noqa: I001
from airflow_gpu.triggers.watch import GpuBatchJobTrigger  # first: the start trigger extends it

__all__ = ["GpuBatchJobTrigger", "GpuBatchStartTrigger"]
