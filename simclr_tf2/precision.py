"""Which precision a run computes in: `--mixed_precision=auto` resolved by the device.

`resolve_precision("auto")` picks mixed_bfloat16 where the device multiplies
bfloat16 natively, several times faster than float32: a TPU, a GPU of compute
capability 8.0 or more (Ampere and later), a CPU with AMX or AVX512-BF16
(Intel Sapphire Rapids and Cooper Lake and later, AMD Zen 4 and later). Elsewhere
bfloat16 is emulated (converted to float32 around float32 kernels), slower
than float32 itself, so "auto" stays float32 ("none"). Any other value of
`--mixed_precision` is taken as it is.

The device is the replicas' (the strategy's), so a CPU-only strategy on a
machine with a GPU is decided by the CPU.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from simclr_tf2.config import PRECISIONS

# CPU feature flags (as /proc/cpuinfo names them) of native bfloat16 arithmetic.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# bfloat16 tensor cores: NVIDIA Ampere (8.0) and later.
NATIVE_BF16_GPU_CAPABILITY = (8, 0)

_COMPUTE_DTYPES = {"none": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


@dataclasses.dataclass(frozen=True)
class Device:
    """A kind of device the replicas run on: "CPU", "GPU" or "TPU", and for a GPU
    its compute capability (major, minor) when known."""

    kind: str
    compute_capability: tuple[int, int] | None = None


def read_cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags ("avx2", "amx_bf16", ...); empty where the file is
    missing (not Linux) or unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _gpus() -> list[Device]:
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append(Device("GPU", details.get("compute_capability")))
    return gpus or [Device("GPU")]


def strategy_devices(strategy: tf.distribute.Strategy | None = None) -> list[Device]:
    """The kinds of device `strategy`'s replicas run on (default: the current
    strategy's; without one, TensorFlow's default device: a GPU if there is one)."""
    strategy = strategy or tf.distribute.get_strategy()
    try:
        names = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's default placement
        names = [d.name for d in tf.config.list_logical_devices("GPU")] or ["/device:CPU:0"]
    kinds = {tf.DeviceSpec.from_string(name).device_type or "CPU" for name in names}
    devices = []
    for kind in sorted(kinds):
        devices.extend(_gpus() if kind == "GPU" else [Device(kind)])
    return devices


def compute_dtype(policy: str) -> str:
    """The dtype the trunk computes in under `policy` (a resolved --mixed_precision)."""
    return _COMPUTE_DTYPES[policy]


def resolve_precision(
    name: str, devices: list[Device] | None = None, cpu_flags: frozenset[str] | None = None
) -> tuple[str, str]:
    """The precision a run computes in, and why.

    Args:
        name: a --mixed_precision value, one of `PRECISIONS`.
        devices: the devices of the replicas (default: `strategy_devices()`).
        cpu_flags: the CPU's feature flags (default: `read_cpu_flags()`).

    Returns:
        (policy, reason): `policy` is "none" (float32), "mixed_bfloat16" or
        "mixed_float16"; `reason` says in one sentence why.
    """
    if name not in PRECISIONS:
        raise ValueError(f"mixed_precision={name!r} is not one of {PRECISIONS}.")
    if name != "auto":
        return name, f"--mixed_precision={name} as asked"
    devices = strategy_devices() if devices is None else devices
    kinds = {d.kind for d in devices}
    if "TPU" in kinds:
        return "mixed_bfloat16", "--mixed_precision=auto on a TPU (bfloat16 is its native type)"
    if "GPU" in kinds:
        capabilities = [d.compute_capability for d in devices if d.kind == "GPU"]
        if None in capabilities:
            return "none", "--mixed_precision=auto: a GPU of unknown compute capability"
        lowest = min(capabilities)
        shown = ".".join(map(str, lowest))
        if lowest >= NATIVE_BF16_GPU_CAPABILITY:
            return "mixed_bfloat16", (
                f"--mixed_precision=auto on GPUs of compute capability {shown} (8.0 or more: "
                "bfloat16 tensor cores)"
            )
        return "none", (
            f"--mixed_precision=auto on a GPU of compute capability {shown} (bfloat16 tensor "
            "cores need 8.0)"
        )
    flags = read_cpu_flags() if cpu_flags is None else cpu_flags
    native = [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]
    if native:
        return "mixed_bfloat16", (
            f"--mixed_precision=auto on a CPU with native bfloat16 ({', '.join(native)})"
        )
    if not flags:
        return "none", "--mixed_precision=auto on a CPU whose features are unknown"
    return "none", (
        "--mixed_precision=auto on a CPU without amx_bf16 or avx512_bf16 (bfloat16 would be "
        "emulated, slower than float32)"
    )
