"""Training-speed benchmark: pairs/s of the real `model.fit` path, FLOPs, memory.

For one configuration (the same flag names as run.py) it measures, in one run:
  * the yardsticks, before and after the timed windows (the host's speed
    drifts between hours, so figures are compared as ratios to the mean of the
    two): TensorFlow's matmul peak and a representative convolution's peak
    (3x3, batch 256, 32x32, 64 -> 64 channels, forward), both in the dtype the
    step computes in (float32; bfloat16 under mixed_bfloat16, float16 under
    mixed_float16), and the fp32 matmul peak for the figures scaled to the
    reference host;
  * what the CPU offers (AMX, AVX512-BF16, AVX-512, AVX2, FMA from its flags)
    and the oneDNN ISA and kernels a small convolution and matmul in that
    dtype run on (ONEDNN_VERBOSE=1 in a subprocess);
  * pairs/s through `model.fit` on a synthetic in-memory batch, and with the
    real input pipeline attached (CIFAR-10's train.npz at 32 px when
    ../shared/data is there, else random uint8 arrays of the requested size):
    `--windows` timed windows of `--steps` steps each, the two inputs taking
    turns window by window (the host's speed drifts within minutes), each
    window leaving out its first execution; the medians are reported, and the
    pipeline's slowdown as the median ratio of each pipeline window to the
    synthetic window before it;
  * the model's FLOPs per pair, counted with TensorFlow's per-op statistics on
    the ops the traced train step runs (forward, backward and update), and
    the achieved FLOP/s as a percentage of the matmul and convolution peaks;
  * the process's peak resident memory after the first synthetic window,
    before the input pipeline has run.

Usage:
  python tools/benchmark.py --resnet_depth=18 --image_size=32 --train_batch_size=256
The last line printed is one JSON object with pairs_per_s, pairs_per_s_with_pipeline,
peak_rss_gb, flops_per_pair, pct_of_matmul_peak, pct_of_conv_peak, the precision the
step computes in (--mixed_precision=auto resolved, and why), cpu_features, onednn and the
settings.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    from simclr_tf2.config import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--resnet_depth", type=int, default=18)
    add("--width_multiplier", type=float, default=1.0)
    add("--image_size", type=int, default=32)
    add("--train_batch_size", type=int, default=256)
    add("--strategy", default="auto", help="as run.py: auto, one_device, mirrored")
    add("--num_logical_cpus", type=int, default=0)
    add("--mixed_precision", default="none", choices=PRECISIONS, help="as run.py")
    add("--jit_compile", action="store_true")
    add("--steps_per_execution", type=int, default=1)
    add("--proj_head_mode", default="nonlinear")
    add("--num_proj_layers", type=int, default=3)
    add("--optimizer", default="lars")
    add("--global_bn", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    add(
        "--kernels",
        default="auto",
        choices=["auto", "plain"],
        help="--kernels: the CPU kernels of simclr_tf2.models.kernels where "
        "they apply, or stock Keras layers only (for an A/B of their gain)",
    )
    add("--steps", type=int, default=8, help="steps per timed window")
    add("--windows", type=int, default=3, help="timed windows (the median is reported)")
    add("--no_pipeline", action="store_true", help="skip the run with the input pipeline")
    add(
        "--profile_dir",
        default="",
        help="also profile --steps steps of fit on synthetic inputs and print the op time "
        "by op type (the trace is left in this directory, for TensorBoard's profile tab)",
    )
    add(
        "--memory_profile_dir",
        default="",
        help="also trace one step of fit on synthetic inputs and print the tensors alive at "
        "TensorFlow's memory peak, by the op that made them (turns on TensorFlow's BFC "
        "allocator on the CPU for the whole run, which changes the peak RSS figure)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.windows < 1 or args.steps % args.steps_per_execution:
        parser.error(
            f"--steps={args.steps} must be a positive multiple of "
            f"--steps_per_execution={args.steps_per_execution}, and --windows at least 1."
        )
    return args


# Flags that are not settings of the measured run (left out of the JSON).
_NOT_SETTINGS = ("no_pipeline", "profile_dir", "memory_profile_dir")


def peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class WindowTimer:
    """Keras callback: wall time of one `fit` call after its first execution.

    The first execution of each call (iterator start, and the tracing on the
    very first call) is left out: the window runs from its end to the end of
    the epoch.
    """

    def __init__(self):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(cb):
                super().__init__()
                cb.start = None
                cb.duration = None

            def on_train_batch_end(cb, batch, logs=None):
                if cb.start is None:
                    # Logs hold the step's tensors: reading one waits for the step to finish.
                    float(logs["total_loss"])
                    cb.start = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                float(logs["total_loss"])
                cb.duration = time.perf_counter() - cb.start

        self.callback = _Timer()


def timed_window(model, dataset, args) -> float:
    """Pairs/s of `--steps` steps of one `fit` call, after one untimed execution."""
    timer = WindowTimer()
    model.fit(
        dataset,
        steps_per_epoch=args.steps_per_execution + args.steps,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[timer.callback],
    )
    return args.train_batch_size * args.steps / timer.callback.duration


def timed_runs(model, datasets: dict, args, after_first=None) -> dict:
    """Pairs/s per dataset: `--windows` windows each, the datasets taking turns.

    Taking turns window by window keeps the comparison fair on a host whose
    speed drifts by tens of percent within minutes. Each dataset first runs
    two untimed executions (tracing, warm-up). `after_first()` runs after the
    first dataset's first window, before any other dataset has run.
    """
    rates = {name: [] for name in datasets}
    for w in range(args.windows):
        for i, (name, dataset) in enumerate(datasets.items()):
            if w == 0:
                model.fit(
                    dataset,
                    steps_per_epoch=2 * args.steps_per_execution,
                    epochs=1,
                    verbose=0,
                    shuffle=False,
                )
            rates[name].append(timed_window(model, dataset, args))
            if w == 0 and i == 0 and after_first is not None:
                after_first()
    return rates


def count_train_flops(config, num_classes: int) -> int:
    """FLOPs of one train step on one device, counted from the graph of the step.

    Each op's FLOPs are TensorFlow's own (its registered "flops" statistics, as
    the profiler counts them), summed over the ops the runtime runs: those the
    step's outputs and updates depend on. An op traced but unused is pruned
    before the function runs, so it is not counted (the forward convolutions a
    recomputing gradient traces only to differentiate them are such ops).
    """
    import tensorflow as tf
    from tensorflow.python.framework import ops as tf_ops

    from simclr_tf2.build import build_model, compile_model, dtype_policy

    with dtype_policy(config.runtime.mixed_precision):
        model = build_model(config, num_classes)
        compile_model(model, config, 0.1)
    size, batch = config.data.image_size, config.train.train_batch_size
    step = tf.function(model.train_step).get_concrete_function(
        (tf.TensorSpec((batch, size, size, 6), tf.float32), tf.TensorSpec((batch,), tf.int64))
    )
    graph = step.graph
    roots = [t.op.name for t in tf.nest.flatten(step.outputs)]
    roots += [op.name for op in graph.control_outputs]
    run = {
        node.name
        for node in tf.compat.v1.graph_util.extract_sub_graph(graph.as_graph_def(), roots).node
    }
    total = 0
    for op in graph.get_operations():
        if op.name in run:
            try:
                total += tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
            except ValueError:  # no statistics registered for this op type: no FLOPs counted
                pass
    return int(total)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.memory_profile_dir:
        # Allocator events are recorded by the BFC allocator only; it must be
        # chosen before TensorFlow starts.
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    from simclr_tf2.distribute import build_strategy

    # First: splitting the CPU must come before TensorFlow touches a device.
    strategy = build_strategy(args.strategy, args.num_logical_cpus)

    import numpy as np
    import tensorflow as tf

    from simclr_tf2.assembly import Sources, build_run
    from simclr_tf2.config import Config
    from simclr_tf2.data.sources import npz_source
    from simclr_tf2.precision import compute_dtype, resolve_precision, strategy_devices
    from tools.hardware import (
        REFERENCE_PEAK_GFLOPS,
        conv_peak_gflops,
        cores,
        cpu_features,
        matmul_peak_gflops,
        onednn_kernels,
    )

    rng = np.random.default_rng(0)
    num_classes, size = 10, args.image_size
    cifar = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10")
    path = os.path.join(cifar, "train.npz")
    if size != 32 or not os.path.exists(path):
        # A file of this process's own: two runs at once must not share one.
        handle, path = tempfile.mkstemp(prefix=f"simclr_bench_{size}_", suffix=".npz")
        os.close(handle)
        atexit.register(os.remove, path)
        images = rng.integers(0, 256, (2048, size, size, 3), dtype=np.uint8)
        np.savez(path, images=images, labels=np.arange(2048) % num_classes)
    precision, reason = resolve_precision(args.mixed_precision, strategy_devices(strategy))
    dtype = compute_dtype(precision)
    print(f"precision: {dtype} ({reason})", flush=True)
    config = Config.from_flags(
        resnet_depth=args.resnet_depth,
        width_multiplier=args.width_multiplier,
        image_size=args.image_size,
        train_batch_size=args.train_batch_size,
        mixed_precision=precision,
        jit_compile=args.jit_compile,
        steps_per_execution=args.steps_per_execution,
        proj_head_mode=args.proj_head_mode,
        num_proj_layers=args.num_proj_layers,
        optimizer=args.optimizer,
        global_bn=args.global_bn,
        kernels=args.kernels,
        color_jitter_strength=0.5,
        use_blur=args.image_size > 32,
        temperature=0.5,
        weight_decay=1e-6,
        train_steps=10_000 * args.steps_per_execution,
        warmup_epochs=0.1,
    )
    run = build_run(config, strategy, Sources(train=npz_source(path)))
    model = run.model
    onednn = onednn_kernels(dtype)

    def peaks() -> dict:
        """The yardsticks now: matmul and convolution in the step's dtype, fp32 matmul."""
        matmul, conv = matmul_peak_gflops(dtype=dtype), conv_peak_gflops(dtype=dtype)
        fp32 = matmul if dtype == "float32" else matmul_peak_gflops()
        return {"matmul": matmul, "conv": conv, "matmul_fp32": fp32}

    before = peaks()

    batch = config.train.train_batch_size
    x = rng.random((batch, size, size, 6), dtype=np.float32)
    y = rng.integers(0, num_classes, batch)
    synthetic = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((x, y)).repeat()
    )
    datasets = {"synthetic": synthetic}
    if not args.no_pipeline:
        datasets["pipeline"] = run.train_dataset()
    # Peak RSS of the train step alone: taken before the pipeline has run.
    rss = []
    rates = timed_runs(model, datasets, args, after_first=lambda: rss.append(peak_rss_gb()))
    # The peaks are taken before and after the timed windows; the mean stands for the run.
    after = peaks()
    peak = {k: (before[k] + after[k]) / 2 for k in before}
    pairs_per_s = statistics.median(rates["synthetic"])
    with_pipeline = slowdown = None
    if "pipeline" in rates:
        with_pipeline = statistics.median(rates["pipeline"])
        # Each pipeline window against the synthetic window just before it.
        ratios = [p / s for p, s in zip(rates["pipeline"], rates["synthetic"], strict=True)]
        slowdown = 100 * (1 - statistics.median(ratios))
    if args.profile_dir:
        from tools.op_profile import format_op_times, op_times, profile_fit

        profile_fit(model, synthetic, args.steps, args.profile_dir)
        print(format_op_times(op_times(args.profile_dir), args.steps), flush=True)
    if args.memory_profile_dir:
        from tools.memory_profile import format_live, live_at_peak
        from tools.op_profile import profile_fit

        profile_fit(model, synthetic, 1, args.memory_profile_dir, host_tracer_level=3)
        print(format_live(*live_at_peak(args.memory_profile_dir)), flush=True)

    flops = count_train_flops(config, num_classes)
    flops_per_pair = flops / batch
    achieved = pairs_per_s * flops_per_pair / 1e9
    result = {
        "pairs_per_s": round(pairs_per_s, 2),
        "pairs_per_s_with_pipeline": None if with_pipeline is None else round(with_pipeline, 2),
        "pipeline_slowdown_pct": None if slowdown is None else round(slowdown, 1),
        "synthetic_windows": [round(r, 2) for r in rates["synthetic"]],
        "pipeline_windows": [round(r, 2) for r in rates.get("pipeline", [])],
        "peak_rss_gb": round(rss[0], 2),
        "flops_per_pair": flops_per_pair,
        "achieved_gflops": round(achieved, 1),
        # The step's precision (--mixed_precision=auto resolved) and its dtype: the
        # peaks below are measured in that dtype.
        "precision": precision,
        "precision_reason": reason,
        "compute_dtype": dtype,
        "matmul_peak_gflops": round(peak["matmul"], 1),
        "matmul_peak_before_after": [round(before["matmul"], 1), round(after["matmul"], 1)],
        "pct_of_matmul_peak": round(100 * achieved / peak["matmul"], 1),
        "conv_peak_gflops": round(peak["conv"], 1),
        "conv_peak_before_after": [round(before["conv"], 1), round(after["conv"], 1)],
        "pct_of_conv_peak": round(100 * achieved / peak["conv"], 1),
        # Scaled by the fp32 matmul peak, whatever the dtype: the host's speed.
        "fp32_matmul_peak_gflops": round(peak["matmul_fp32"], 1),
        "pairs_per_s_at_reference_peak": round(
            pairs_per_s * REFERENCE_PEAK_GFLOPS / peak["matmul_fp32"], 2
        ),
        "cpu_features": cpu_features(),
        "onednn": onednn,
        "cores": cores(),
        "replicas": strategy.num_replicas_in_sync,
        **{k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS},
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
