"""Will the train step fit in memory? An estimate made before anything is built.

`estimate(config, num_replicas)` counts, layer by layer from the settings alone
(no TensorFlow, no model), the activations a train step keeps for its backward
pass, per view and image: every convolution's output (batch norm's input), the
ReLU outputs the backward needs, and where the CPU kernels are off
(`--kernels=plain`, a GPU or TPU, synchronised batch norm over several
replicas) also the ReLU outputs inside each block and the padded copies in
front of strided convolutions (see `simclr_tf2.models.kernels`). That count
times the batch, two views and the bytes per element of the precision, scaled
by one factor calibrated on measurements, plus the variables with their
gradients and optimizer slots, the in-memory data and the input pipeline's
buffers and a constant for the runtime (Python, TensorFlow, the traced step),
is the estimate of the process's peak resident memory.

Calibration and error (docs/benchmarks.md, `tools/memory_table.py`): the
factors and the runtime constant below were fitted on ResNet-18 (CIFAR stem,
32 px, batches 64 and 256) and ResNet-50 (batches 16 and 64), float32, with the
CPU kernels, on a 2-core AMD EPYC, where the estimate came within 3% of the
measured peak resident memory; `tests/test_memory.py` checks it against a
model not used in the fit (ResNet-18 at half width, two batches) within
`STATED_ERROR` (15%). Rows not used in the fit came within 10%: ResNet-50 at
224 px; mixed_bfloat16 (2 bytes per activation and the same factors, no factor
of its own) at 32 px (within 5%) and 224 px (9% under); the plain layers in
float32 (their extra count is structural, with the same factors; within 5%).
On a GPU the runtime constant is replaced by `GPU_RUNTIME_BYTES` (device memory
holds no Python); those figures are not measured.

`check_memory` compares the estimate with the memory each replica has (host
memory available to this process on CPUs, shared by its replicas; device memory
on GPUs where it can be read) and raises `MemoryCheckError` (a `ConfigError`:
one line, exit status 2 from run.py) naming the estimate, what is available and
the largest batch that fits.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

from simclr_tf2.config import Config, ConfigError
from simclr_tf2.models.resnet import BLOCK_SPECS

# Calibrated on the measurements of docs/benchmarks.md ("Memory of the train step").
# Activations kept for the backward pass are scaled by this factor, by block type: the
# backward's own gradients alive at its start, oneDNN's work buffers and the C
# allocator's slack. Bottleneck blocks keep more than the count says (not yet explained:
# the fitted factors differ by 1.27x).
ACTIVATION_FACTOR = {"residual": 1.13, "bottleneck": 1.43}
# Python, TensorFlow, Keras, the traced train step: resident before the step's tensors.
RUNTIME_BYTES = 0.9e9
# Device memory besides the step's tensors on a GPU (cuDNN work space); not measured.
GPU_RUNTIME_BYTES = 0.5e9
# Copies of each float32 variable: itself, its gradient, the update's temporaries;
# plus the optimizer's slots (OPTIMIZER_SLOTS).
VARIABLE_COPIES = 3
OPTIMIZER_SLOTS = {"lars": 1, "momentum": 1, "adam": 2, "lamb": 2}
# Batches of views the input pipeline holds besides the one in the step (prefetch).
PREFETCH_BATCHES = 2
# Examples in the training shuffle buffer (data.pipeline.build_dataset) and the size
# assumed for an encoded image whose size is not known (an ImageNet JPEG is ~110 KB).
SHUFFLE_BUFFER = 10_000
ENCODED_IMAGE_BYTES = 128 * 1024
# The largest relative error of the estimate against measured peaks (docs/benchmarks.md).
STATED_ERROR = 0.15

GB = 1e9


class MemoryCheckError(ConfigError):
    """The train step would not fit in memory; the message names the batch that fits."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """What one view of one image costs the train step: elements kept for the
    backward pass (`saved`) and the number of trainable scalars (`params`)."""

    saved: int
    params: int


def _conv_params(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out


def encoder_layout(
    depth: int,
    width_multiplier: float,
    image_size: int,
    cifar_stem: bool,
    sk_ratio: float = 0.0,
    se_ratio: float = 0.0,
    kernels: bool = True,
) -> Layout:
    """Elements per view the ResNet's train step keeps for its backward pass, and its
    parameters, from its settings (the architecture of `models.resnet.ResNet`).

    Args:
        kernels: whether the CPU kernels run in training (fused batch norm,
            recomputed ReLU, no padded copies); see `kernels_run`.
    """

    def width(c: int) -> int:
        return max(1, int(round(c * width_multiplier)))

    saved = params = 0
    side, channels = image_size, 3

    def conv(k: int, stride: int, c_out: int, bn: bool = True) -> None:
        nonlocal side, channels, saved, params
        if stride > 1 and k > 1 and not kernels:
            saved += (side + k - 1) ** 2 * channels  # the padded copy
        side = -(-side // stride)
        params += _conv_params(k, channels, c_out) + (4 * c_out if bn else 0)
        channels = c_out
        saved += side * side * c_out  # its output: batch norm's input

    def relu(kept: bool) -> None:
        nonlocal saved
        if kept:
            saved += side * side * channels

    saved += side * side * channels  # the stacked views: the first convolution's input
    if cifar_stem:
        conv(3, 1, width(64))
        relu(True)
    else:
        if sk_ratio > 0:  # ResNet-D stem
            conv(3, 2, width(32))
            relu(True)
            conv(3, 1, width(32))
            relu(True)
            conv(3, 1, width(64))
        else:
            conv(7, 2, width(64))
        relu(True)  # max pool's input
        side = -(-side // 2)
        saved += side * side * channels  # max pool's output
    block_type, counts = BLOCK_SPECS[depth]
    expansion = 1 if block_type == "residual" else 4
    for g, count in enumerate(counts):
        filters = width(64 * 2**g)
        for b in range(count):
            stride = (1 if g == 0 else 2) if b == 0 else 1
            if b == 0:  # the projection shortcut's 1x1 convolution and its output
                params += _conv_params(1, channels, filters * expansion) + 4 * filters * expansion
                shortcut_side = -(-side // stride)
                if sk_ratio > 0:  # ResNet-D: the average-pooled input is kept too
                    saved += shortcut_side**2 * channels
                saved += shortcut_side**2 * filters * expansion
            if block_type == "residual":
                conv(3, stride, filters)
                relu(not kernels)  # recomputed by the kernels
                conv(3, 1, filters)
            else:
                conv(1, 1, filters)
                relu(not kernels)
                if sk_ratio > 0:
                    # Both branches in one convolution, its ReLU output and the split
                    # branches the weighting multiplies; the attention is per channel.
                    conv(3, stride, 2 * filters)
                    saved += 2 * side * side * 2 * filters
                    attention = max(int(filters * sk_ratio), 32)
                    params += filters * attention + 4 * attention + attention * 2 * filters
                    channels = filters
                else:
                    conv(3, stride, filters)
                    relu(not kernels)
                conv(1, 1, 4 * filters)
            if se_ratio > 0:
                reduced = max(1, int(filters * se_ratio))
                params += 2 * channels * reduced + reduced + channels
                saved += side * side * channels  # the gated input
            relu(True)  # the block's output
    return Layout(saved, params)


def head_layout(config: Config, feature_width: int, num_classes: int | None) -> Layout:
    """Elements per view and parameters of the projection and supervised heads."""
    m = config.model
    widths = {"none": [], "linear": [m.proj_out_dim]}.get(
        m.proj_head_mode, [feature_width] * (m.num_proj_layers - 1) + [m.proj_out_dim]
    )
    saved = params = 0
    previous = feature_width
    for w in widths:
        params += previous * w + 5 * w
        saved += 3 * w  # dense output, normalised, rectified
        previous = w
    if num_classes:
        params += feature_width * num_classes + num_classes
        saved += num_classes
    return Layout(saved, params)


def kernels_run(config: Config, num_replicas: int, accelerated: bool) -> bool:
    """Whether the CPU kernels are what the train step runs: "auto" without a GPU or
    TPU, and batch norm that is not synchronised over several replicas (the fused
    kernel needs the replica's own statistics)."""
    m = config.model
    if m.kernels != "auto" or accelerated:
        return False
    return not (m.global_bn and num_replicas > 1)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The train step's estimated peak memory, per replica, and what it is compared with.

    Attributes:
        bytes: estimated peak per replica (on a CPU, the host's peak shared equally by
            its replicas).
        per_example: bytes each example of a replica's batch adds.
        fixed: bytes per replica that do not depend on the batch.
        available: bytes available to each replica (None: not known).
        largest_batch: the largest global batch whose estimate fits (None: not known;
            0: not even one example per replica).
        device: "CPU", "GPU" or "TPU".
        num_replicas: replicas on this host.
    """

    bytes: float
    per_example: float
    fixed: float
    available: float | None = None
    largest_batch: int | None = None
    device: str = "CPU"
    num_replicas: int = 1

    @property
    def fits(self) -> bool:
        return self.available is None or self.bytes <= self.available

    def describe(self) -> str:
        """E.g. "about 7.8 GB per replica (estimate); 21.3 GB available to each"."""
        text = f"about {self.bytes / GB:.1f} GB per replica (estimated, +-{STATED_ERROR:.0%})"
        if self.available is None:
            return f"{text}; the {self.device}'s memory is not known, so not checked"
        return f"{text}; {self.available / GB:.1f} GB of {self.device} memory available to each"


def _precision_bytes(config: Config) -> int:
    return 4 if config.runtime.mixed_precision == "none" else 2


def estimate(
    config: Config,
    num_replicas: int = 1,
    *,
    accelerated: bool = False,
    device: str = "CPU",
    num_classes: int | None = None,
    image_shape: tuple | None = None,
    num_examples: int | None = None,
    available: float | None = None,
) -> Estimate:
    """The train step's estimated peak memory per replica for `config`.

    Args:
        config: the run's settings (encoder, heads, image size, batch, precision,
            kernels, optimizer).
        num_replicas: replicas in sync on this host.
        accelerated: whether TensorFlow sees a GPU or TPU (the CPU kernels are off).
        device: "CPU" (the runtime and the data share the host's memory with the
            replicas), "GPU" or "TPU" (each replica has its device's memory).
        num_classes: classes of the supervised head (None: none).
        image_shape: (H, W, 3) of in-memory uint8 images (None: files, read as needed).
        num_examples: examples of the training data.
        available: bytes available to each replica, if known.
    """
    m, d = config.model, config.data
    kernels = kernels_run(config, num_replicas, accelerated)
    encoder = encoder_layout(
        m.resnet_depth,
        m.width_multiplier,
        d.image_size,
        config.cifar_stem,
        m.sk_ratio,
        m.se_ratio,
        kernels,
    )
    block_type, _ = BLOCK_SPECS[m.resnet_depth]
    feature_width = max(1, int(round(512 * m.width_multiplier))) * (
        1 if block_type == "residual" else 4
    )
    heads = head_layout(config, feature_width, num_classes)
    element = _precision_bytes(config)
    factor = ACTIVATION_FACTOR[block_type]
    pixels = d.image_size**2 * 6 * 4  # a pair of float32 views
    per_example = (
        2 * factor * (encoder.saved + heads.saved) * element
        # the pair as the step gets it, and the pipeline's prefetched batches
        + (1 + PREFETCH_BATCHES) * pixels
    )
    params = encoder.params + heads.params
    copies = VARIABLE_COPIES + OPTIMIZER_SLOTS.get(config.optim.optimizer, 2)
    if config.runtime.mixed_precision != "none":
        copies += 0.5  # the variables cast to 16 bits
    weights = 4 * params * copies
    if device == "CPU":
        # The runtime and the data are the host's, shared by its replicas.
        examples = num_examples or 0
        if image_shape:
            one = int(image_shape[0]) * int(image_shape[1]) * int(image_shape[2])
            data = 2 * examples * one  # the arrays, and TensorFlow's copy of them
            data += min(SHUFFLE_BUFFER, examples) * one
        else:
            data = min(SHUFFLE_BUFFER, examples) * ENCODED_IMAGE_BYTES
        shared = RUNTIME_BYTES + data
    else:
        shared = GPU_RUNTIME_BYTES * num_replicas
    fixed = weights + shared / num_replicas
    batch = config.train.train_batch_size // num_replicas
    total = fixed + batch * per_example
    largest = None
    if available is not None:
        room = available - fixed
        largest = max(0, int(room // per_example)) * num_replicas
    return Estimate(total, per_example, fixed, available, largest, device, num_replicas)


# ------------------------------------------------------------------ what is available


def _read_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def host_available_bytes() -> int | None:
    """Host memory this process can still grow into: what it holds (its resident
    memory, which the estimate counts) plus the memory available (MemAvailable, or
    the container's limit minus its use when that is less). None off Linux."""
    available = _read_kib("/proc/meminfo", "MemAvailable")
    if available is None:
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available + (_read_kib("/proc/self/status", "VmRSS") or 0)


def _gpu_memory_bytes() -> int | None:
    """The smallest GPU's memory: its logical device's limit if one was set, else what
    nvidia-smi reports (TensorFlow does not report a GPU's total memory)."""
    import tensorflow as tf

    limits = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            configs = tf.config.get_logical_device_configuration(gpu) or []
        except (RuntimeError, ValueError):
            configs = []
        limits += [c.memory_limit * 2**20 for c in configs if c.memory_limit]
    if limits:
        return min(limits)
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return min(int(line) for line in out.split()) * 2**20
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _device_kind(strategy) -> str:
    """Where the replicas run: "TPU" under a TPU strategy, else "GPU" when TensorFlow
    sees one (every strategy then places the step there), else "CPU"."""
    import tensorflow as tf

    if "TPU" in type(strategy).__name__:
        return "TPU"
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def check_memory(
    config: Config,
    strategy,
    *,
    num_classes: int | None = None,
    image_shape: tuple | None = None,
    num_examples: int | None = None,
    available_bytes: float | None = None,
) -> Estimate:
    """The estimate for training `config` under `strategy`, checked against the memory
    each replica has unless --skip_memory_check. `available_bytes` replaces the
    host's available memory (a test's seam); on GPUs and TPUs it is the device's.

    Raises:
        MemoryCheckError: the estimate exceeds the memory available to each replica.
    """
    from simclr_tf2.models.kernels import _accelerated

    replicas = strategy.num_replicas_in_sync
    device = _device_kind(strategy)
    if available_bytes is None:
        if device == "CPU":
            host = host_available_bytes()
            available_bytes = None if host is None else host / replicas
        elif device == "GPU":
            available_bytes = _gpu_memory_bytes()
    elif device == "CPU":
        available_bytes = available_bytes / replicas
    result = estimate(
        config,
        replicas,
        accelerated=_accelerated(),
        device=device,
        num_classes=num_classes,
        image_shape=image_shape,
        num_examples=num_examples,
        available=available_bytes,
    )
    if result.fits or config.runtime.skip_memory_check:
        return result
    batch = config.train.train_batch_size
    precision = config.runtime.mixed_precision
    what = (
        f"ResNet-{config.model.resnet_depth} at {config.data.image_size} px, "
        f"{'float32' if precision == 'none' else precision}, "
        f"{batch // replicas} per replica"
    )
    if result.largest_batch:
        fix = f"the largest batch that fits is --train_batch_size={result.largest_batch}"
    else:
        fix = "not even a batch of one per replica fits: a smaller model or image size is needed"
    raise MemoryCheckError(
        f"--train_batch_size={batch}: the train step would need about {result.bytes / GB:.1f} "
        f"GB of memory per replica ({what}; estimated, +-{STATED_ERROR:.0%}), but "
        f"{result.available / GB:.1f} GB is available to each; {fix}. Or start anyway "
        "with --skip_memory_check."
    )
