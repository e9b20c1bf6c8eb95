"""The train step's memory estimate (`simclr_tf2.memory`) against measured peaks.

For each configuration a subprocess builds the run as run.py does
(`assembly.build_run`, on an .npz file of random images of the configuration's
size) and trains `--steps` steps through `model.fit` on the real input pipeline;
the subprocess's peak resident memory (VmHWM, which the subprocess reports of itself) is
the measured peak, next to the estimate `simclr_tf2.memory.estimate` makes for
the same settings. Checkpoints, TensorBoard and the export are left out (they
come after the steps, and the export alone takes minutes on 2 cores). One
configuration at a time (the subprocesses would compete for memory), each run
`--repeats` times.

Usage:
  python tools/memory_table.py                       # the table of docs/benchmarks.md
  python tools/memory_table.py --configs=18:32:64:none:auto,50:224:16:mixed_bfloat16:auto
  python tools/memory_table.py --gpu_table           # estimates only, nothing is run

A configuration is depth:image_size:batch:precision:kernels[:width]. Prints a
Markdown table and, last, one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# As run.py: oneDNN's CPU kernels (see simclr_tf2/__init__.py).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The table of docs/benchmarks.md: ResNet-18 and -50 with the CIFAR stem at three
# batches, ResNet-50 at 224 px, float32 and bfloat16, with the CPU kernels; and
# two ResNet-18 runs with the plain layers. bfloat16 at smaller batches: on a CPU without
# native bfloat16 (AVX2 only) its step takes about 2 s per pair.
_ENCODERS = {
    "none": ((18, 32, (64, 128, 256)), (50, 32, (16, 32, 64)), (50, 224, (8,))),
    "mixed_bfloat16": ((18, 32, (32, 64, 128)), (50, 32, (8, 16, 32)), (50, 224, (8,))),
}
DEFAULT_CONFIGS = [
    f"{depth}:{size}:{batch}:{precision}:auto"
    for precision, encoders in _ENCODERS.items()
    for depth, size, batches in encoders
    for batch in batches
] + ["18:32:64:none:plain", "18:32:256:none:plain"]
GPU_MEMORY_GB = (16, 24, 40, 80)


def parse_config(text: str) -> dict:
    parts = text.split(":")
    depth, size, batch, precision, kernels = parts[:5]
    return dict(
        resnet_depth=int(depth),
        image_size=int(size),
        train_batch_size=int(batch),
        mixed_precision=precision,
        kernels=kernels,
        width_multiplier=float(parts[5]) if len(parts) > 5 else 1.0,
    )


def make_images(path: str, size: int, count: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(count) % 10)


def train_command(settings: dict, data: str, steps: int) -> list[str]:
    """The command line of one measurement: this tool, training `steps` steps."""
    return [
        sys.executable,
        os.path.abspath(__file__),
        f"--train_one={json.dumps(settings)}",
        f"--data={data}",
        f"--steps={steps}",
    ]


def train_one(settings: dict, data: str, steps: int) -> None:
    """Builds the run of `settings` on the .npz file `data` as run.py does and trains
    `steps` steps (the measured subprocess)."""
    from simclr_tf2.distribute import build_strategy

    strategy = build_strategy("auto", 0)
    from simclr_tf2.assembly import Sources, build_run
    from simclr_tf2.config import Config
    from simclr_tf2.data.sources import npz_source

    config = Config.from_flags(train_steps=steps, **settings)
    run = build_run(config, strategy, Sources(train=npz_source(data)))
    run.model.fit(run.train_dataset(), steps_per_epoch=steps, epochs=1, verbose=0)
    # The peak of this process's own memory map (VmHWM starts afresh at exec). The
    # parent's ru_maxrss of a child would not do: Linux carries the forking parent's
    # high-water mark into the child's across exec, so a large parent (a test worker
    # that ran other tests) would be measured instead.
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(f"VmHWM_KB {peak_kb}", flush=True)


def peak_rss_of(command: list[str]) -> tuple[float, float]:
    """(peak resident GB, seconds) of `command` run to its end: the VmHWM the
    measured process reports of itself (see `train_one`)."""
    started = time.time()
    with tempfile.TemporaryFile("w+") as log, tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, stderr=log, cwd=ROOT)
        if process.wait():
            log.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{log.read()[-3000:]}")
        out.seek(0)
        peak_kb = int(next(line for line in out if line.startswith("VmHWM_KB ")).split()[1])
    return peak_kb * 1024 / 1e9, time.time() - started


def estimate_for(settings: dict, num_examples: int):
    from simclr_tf2.config import Config
    from simclr_tf2.memory import estimate

    config = Config.from_flags(**settings)
    return estimate(
        config,
        num_classes=10,
        image_shape=(settings["image_size"],) * 2 + (3,),
        num_examples=num_examples,
    )


def gpu_table() -> str:
    """Largest per-replica batch of ResNet-50 at 224 px per GPU memory size, by the estimator."""
    from simclr_tf2.config import Config
    from simclr_tf2.memory import GB, estimate

    rows = [
        "| ResNet-50, 224 px, LARS, one replica per GPU | "
        + " | ".join(f"{g} GB" for g in GPU_MEMORY_GB)
        + " |",
        "|---" * (len(GPU_MEMORY_GB) + 1) + "|",
    ]
    for precision, name in (("none", "float32"), ("mixed_bfloat16", "bfloat16 / float16")):
        config = Config.from_flags(image_size=224, mixed_precision=precision)
        cells = [
            estimate(
                config, accelerated=True, device="GPU", num_classes=1000, available=g * GB
            ).largest_batch
            for g in GPU_MEMORY_GB
        ]
        rows.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    parser.add_argument("--steps", type=int, default=3, help="train steps of each run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration")
    parser.add_argument("--gpu_table", action="store_true", help="print the GPU table only")
    parser.add_argument("--train_one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_one:
        train_one(json.loads(args.train_one), args.data, args.steps)
        return []
    if args.gpu_table:
        print(gpu_table())
        return []
    results = []
    rows = [
        "| encoder | px | batch | precision | kernels | estimate | measured peak RSS | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for text in args.configs.split(","):
        settings = parse_config(text)
        size, batch = settings["image_size"], settings["train_batch_size"]
        count = max(2 * batch, 256)
        with tempfile.TemporaryDirectory(prefix="simclr_memory_") as tmp:
            data = os.path.join(tmp, "images.npz")
            make_images(data, size, count)
            guess = estimate_for(settings, count).bytes / 1e9
            for _ in range(args.repeats):
                peak, seconds = peak_rss_of(train_command(settings, data, args.steps))
                result = dict(
                    **settings,
                    estimate_gb=round(guess, 2),
                    measured_gb=round(peak, 2),
                    error_pct=round(100 * (guess - peak) / peak, 1),
                    seconds=round(seconds),
                )
                results.append(result)
                print(json.dumps(result), flush=True)
                width = settings["width_multiplier"]
                encoder = f"ResNet-{settings['resnet_depth']}" + (
                    f" x{width:g}" if width != 1 else ""
                )
                precision = {"none": "float32"}.get(
                    settings["mixed_precision"], settings["mixed_precision"]
                )
                rows.append(
                    f"| {encoder} | {size} | {batch} | {precision} | {settings['kernels']} | "
                    f"{guess:.2f} GB | {peak:.2f} GB | {result['error_pct']:+.1f}% |"
                )
    print("\n".join(rows))
    for result in results:
        print(json.dumps(result))
    return results


if __name__ == "__main__":
    main()
