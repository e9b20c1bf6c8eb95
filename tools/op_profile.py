"""Where a train step's time goes: TensorFlow op time by op type, from the profiler.

`profile_fit(model, dataset, steps, logdir)` runs `model.fit` for `steps` steps
under `tf.profiler.experimental` and `op_times(logdir)` reads the trace it
wrote (the XSpace protobuf TensorFlow ships): the wall time of every executed
op, summed by op type over all threads. tools/benchmark.py --profile_dir prints it.

The sum over op types can exceed the step's wall time (ops run on both cores at
once) and leaves out time between ops (the executor, Python, waiting).
"""

from __future__ import annotations

import collections
import glob
import os
import re

# Trace events of executed ops are named "<op name>:<op type>".
_OP_EVENT = re.compile(r"^[^:]+:(_?[A-Z][A-Za-z0-9_]*)$")
# Function-call ops contain the ops they run: counting them would count twice.
_CONTAINERS = {"PartitionedCall", "StatefulPartitionedCall", "While", "If", "StatelessIf"}


def profile_fit(model, dataset, steps: int, logdir: str, host_tracer_level: int = 2) -> None:
    """Runs `steps` steps of `model.fit` (already traced) under the profiler.

    host_tracer_level 3 also records the allocator's events (tools/memory_profile.py).
    """
    import tensorflow as tf

    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=host_tracer_level)
    tf.profiler.experimental.start(logdir, options=options)
    try:
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    finally:
        tf.profiler.experimental.stop()


def newest_trace(logdir: str):
    """The newest XSpace trace (*.xplane.pb) under logdir, parsed."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"No *.xplane.pb trace under {logdir}.")
    space = xplane_pb2.XSpace()
    with open(max(paths, key=os.path.getmtime), "rb") as f:
        space.ParseFromString(f.read())
    return space


def op_times(logdir: str) -> list[tuple[str, float, int]]:
    """(op type, total ms, count), the longest first, from the newest trace in logdir."""
    space = newest_trace(logdir)
    total_ps = collections.Counter()
    count = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                match = _OP_EVENT.match(name)
                if not match or match.group(1) in _CONTAINERS:
                    continue
                total_ps[match.group(1)] += event.duration_ps
                count[match.group(1)] += 1
    return [(op, ps / 1e9, count[op]) for op, ps in total_ps.most_common()]


def format_op_times(times: list[tuple[str, float, int]], steps: int, top: int = 25) -> str:
    """A table of the `top` op types: ms per step, share of all op time, calls per step."""
    total = sum(ms for _, ms, _ in times) or 1.0
    rows = [f"{'op type':<36} {'ms/step':>9} {'share':>7} {'calls/step':>11}"]
    for op, ms, n in times[:top]:
        rows.append(f"{op:<36} {ms / steps:>9.1f} {100 * ms / total:>6.1f}% {n / steps:>11.1f}")
    rest = times[top:]
    if rest:
        ms = sum(t for _, t, _ in rest)
        label = f"({len(rest)} other op types)"
        rows.append(f"{label:<36} {ms / steps:>9.1f} {100 * ms / total:>6.1f}%")
    rows.append(f"{'all ops (summed over threads)':<36} {total / steps:>9.1f}")
    return "\n".join(rows)
