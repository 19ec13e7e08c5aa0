"""Which EC2 instance types can run the GPU worker, and what a job can ask of each.

AWS Batch places a job only on an instance with enough GPUs, vCPUs and *registered*
memory, so a job that fits no listed type sits in RUNNABLE forever. The table below
lets batch-setup refuse such a config before it calls AWS.

The worker's GPU code is implicit's CUDA 13 extension. Its fat binary carries SASS
for sm_80, 86, 90, 100 and 120 and PTX for the same (read from the ``.nv_fatbin``
headers of ``implicit/gpu/_cuda.so`` 0.7.3), so it needs compute capability 8.0 or
newer: Ampere, Ada, Hopper, Blackwell. Turing (T4) and Volta (V100) cannot load it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Memory the kernel, the NVIDIA driver and the ECS agent keep (the Batch AMI reserves
# 32 MiB for the agent; the OS sees less than the advertised size: an 8 GiB m4.large
# registers 7985 MiB). A conservative share, so a job that passes here can be placed.
_MEMORY_KEPT_SHARE = 0.05
_MEMORY_KEPT_MIB = 256

MIN_COMPUTE_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    vcpus: int
    memory_gib: int
    gpu_model: str

    @property
    def memory_mib(self) -> int:
        return self.memory_gib * 1024

    @property
    def job_memory_mib(self) -> int:
        """Memory a job may reserve on this type, leaving headroom for the OS and the ECS agent."""
        return int(self.memory_mib * (1 - _MEMORY_KEPT_SHARE)) - _MEMORY_KEPT_MIB

    def fits(self, gpus: int, vcpus: int, memory_mib: int) -> bool:
        return gpus <= self.gpus and vcpus <= self.vcpus and memory_mib <= self.job_memory_mib

    def describe(self) -> str:
        return (
            f"{self.name} ({self.gpus} x {self.gpu_model}, {self.vcpus} vCPUs, {self.memory_gib} GiB, "
            f"~{self.job_memory_mib} MiB for jobs)"
        )


@dataclass(frozen=True)
class Family:
    name: str
    gpu_model: str
    compute_capability: tuple[int, int]
    # size -> (GPUs, vCPUs, memory GiB), as EC2 DescribeInstanceTypes reports them
    sizes: dict[str, tuple[int, int, int]]

    def types(self) -> list[InstanceType]:
        return [
            InstanceType(f"{self.name}.{size}", gpus, vcpus, mem, self.gpu_model)
            for size, (gpus, vcpus, mem) in self.sizes.items()
        ]


_G_SIZES_16 = {  # g5 and g6 share their shape: 16 GiB per 4 vCPUs up to 16xlarge
    "xlarge": (1, 4, 16),
    "2xlarge": (1, 8, 32),
    "4xlarge": (1, 16, 64),
    "8xlarge": (1, 32, 128),
    "12xlarge": (4, 48, 192),
    "16xlarge": (1, 64, 256),
    "24xlarge": (4, 96, 384),
    "48xlarge": (8, 192, 768),
}

SUPPORTED_FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("g5", "NVIDIA A10G", (8, 6), _G_SIZES_16),
        Family("g6", "NVIDIA L4", (8, 9), _G_SIZES_16),
        Family(
            "g6e",
            "NVIDIA L40S",
            (8, 9),
            {
                "xlarge": (1, 4, 32),
                "2xlarge": (1, 8, 64),
                "4xlarge": (1, 16, 128),
                "8xlarge": (1, 32, 256),
                "12xlarge": (4, 48, 384),
                "16xlarge": (1, 64, 512),
                "24xlarge": (4, 96, 768),
                "48xlarge": (8, 192, 1536),
            },
        ),
        Family("gr6", "NVIDIA L4", (8, 9), {"4xlarge": (1, 16, 128), "8xlarge": (1, 32, 256)}),
        Family(
            "g7",
            "NVIDIA RTX PRO 4500",
            (12, 0),
            {
                "2xlarge": (1, 8, 32),
                "4xlarge": (1, 16, 64),
                "8xlarge": (1, 32, 128),
                "12xlarge": (2, 48, 192),
                "24xlarge": (4, 96, 384),
                "48xlarge": (8, 192, 768),
            },
        ),
        Family(
            "g7e",
            "NVIDIA RTX PRO 6000",
            (12, 0),
            {
                "2xlarge": (1, 8, 64),
                "4xlarge": (1, 16, 128),
                "8xlarge": (1, 32, 256),
                "12xlarge": (2, 48, 512),
                "24xlarge": (4, 96, 1024),
                "48xlarge": (8, 192, 2048),
            },
        ),
        Family("p4d", "NVIDIA A100 40GB", (8, 0), {"24xlarge": (8, 96, 1152)}),
        Family("p4de", "NVIDIA A100 80GB", (8, 0), {"24xlarge": (8, 96, 1152)}),
        Family("p5", "NVIDIA H100", (9, 0), {"4xlarge": (1, 16, 256), "48xlarge": (8, 192, 2048)}),
        Family("p5e", "NVIDIA H200", (9, 0), {"48xlarge": (8, 192, 2048)}),
        Family("p5en", "NVIDIA H200", (9, 0), {"48xlarge": (8, 192, 2048)}),
        Family("p6-b200", "NVIDIA B200", (10, 0), {"48xlarge": (8, 192, 2048)}),
        Family("p6-b300", "NVIDIA B300", (10, 3), {"48xlarge": (8, 192, 4096)}),
    )
}

# Families that have GPUs the worker cannot use, and why. Named so the error can say so.
UNSUPPORTED_FAMILIES: dict[str, str] = {
    "g4dn": "NVIDIA T4 (compute capability 7.5); implicit's CUDA 13 build needs 8.0 or newer",
    "g5g": "NVIDIA T4G on Graviton (arm64, compute capability 7.5); the worker image is x86_64 and needs 8.0 or newer",
    "p3": "NVIDIA V100 (compute capability 7.0); implicit's CUDA 13 build needs 8.0 or newer",
    "p3dn": "NVIDIA V100 (compute capability 7.0); implicit's CUDA 13 build needs 8.0 or newer",
    "p2": "NVIDIA K80 (compute capability 3.7); CUDA 13 does not support it",
    "g3": "NVIDIA M60 (compute capability 5.2); CUDA 13 does not support it",
    "g3s": "NVIDIA M60 (compute capability 5.2); CUDA 13 does not support it",
    "g4ad": "AMD Radeon Pro V520; the worker needs an NVIDIA GPU",
    "g6f": "fractional NVIDIA L4; AWS Batch schedules whole GPUs",
    "gr6f": "fractional NVIDIA L4; AWS Batch schedules whole GPUs",
}

INSTANCE_TYPES: dict[str, InstanceType] = {t.name: t for family in SUPPORTED_FAMILIES.values() for t in family.types()}


class UnsupportedInstanceType(ValueError):
    """An instance type batch-setup will not put in a GPU compute environment; the message says why."""


def resolve(name: str) -> list[InstanceType]:
    """The concrete types ``name`` stands for: one type, or every size of a family (AWS accepts both)."""
    if name in INSTANCE_TYPES:
        return [INSTANCE_TYPES[name]]
    if name in SUPPORTED_FAMILIES:
        return SUPPORTED_FAMILIES[name].types()
    family = name.split(".", 1)[0]
    if family in UNSUPPORTED_FAMILIES:
        return _raise(f"{name!r} has an {UNSUPPORTED_FAMILIES[family]}")
    if family in SUPPORTED_FAMILIES:
        sizes = ", ".join(SUPPORTED_FAMILIES[family].sizes)
        return _raise(f"{name!r} is not a size of the {family} family (sizes: {sizes})")
    if re.match(r"[gp]\d", family):
        return _raise(f"{name!r} is not in batch-setup's table of GPU types the worker can use ({supported_summary()})")
    if name == "optimal" or re.match(r"[a-z][a-z0-9-]*(\.[a-z0-9-]+)?$", name):
        return _raise(f"{name!r} has no NVIDIA GPU")
    return _raise(f"{name!r} is not an EC2 instance type")


def _raise(message: str) -> list[InstanceType]:
    raise UnsupportedInstanceType(message)


def supported_summary() -> str:
    return ", ".join(f"{f.name} ({f.gpu_model})" for f in SUPPORTED_FAMILIES.values())
