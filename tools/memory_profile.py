"""Which tensors are alive at TensorFlow's memory peak, from the profiler's memory events.

TensorFlow's BFC allocator records every allocation and deallocation in a
profiler trace (with the op that made it and its shape). Replaying them in time
order gives the set of live tensors at the moment the allocator's bytes in use
peaked. On the CPU the BFC allocator is used only when TF_CPU_ALLOCATOR_USE_BFC
is "true" in the environment before TensorFlow starts: tools/benchmark.py
--memory_profile_dir sets it.

Usage, after a trace was written (e.g. by tools.op_profile.profile_fit):
    python -m tools.memory_profile LOGDIR
"""

from __future__ import annotations

import collections
import sys

_EVENTS = ("MemoryAllocation", "MemoryDeallocation")


def _stat_value(plane, stat):
    if stat.HasField("ref_value"):
        return plane.stat_metadata[stat.ref_value].name
    for field in ("str_value", "int64_value", "uint64_value", "double_value"):
        if stat.HasField(field):
            return getattr(stat, field)
    return None


def memory_events(logdir: str) -> list[tuple[int, str, dict]]:
    """(time in ps, event name, stats) of every allocator event, in time order."""
    from tools.op_profile import newest_trace

    space = newest_trace(logdir)
    events = []
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name not in _EVENTS:
                    continue
                stats = {names.get(s.metadata_id, ""): _stat_value(plane, s) for s in event.stats}
                events.append((line.timestamp_ns * 1000 + event.offset_ps, name, stats))
    events.sort(key=lambda e: e[0])
    return events


def live_at_peak(logdir: str) -> tuple[int, list[tuple[int, str, str]]]:
    """(peak bytes in use, [(bytes, op name, shape)] alive at that moment, largest first)."""
    events = memory_events(logdir)
    if not events:
        raise ValueError(
            f"No allocator events in the trace under {logdir}: on the CPU set "
            "TF_CPU_ALLOCATOR_USE_BFC=true before TensorFlow starts."
        )
    live: dict = {}
    peak, at_peak = -1, {}
    for _, name, stats in events:
        address = stats.get("addr")
        if name == "MemoryAllocation":
            size = int(stats.get("allocation_bytes") or 0)
            live[address] = (size, str(stats.get("tf_op", "")), str(stats.get("shape", "")))
        else:
            live.pop(address, None)
        in_use = int(stats.get("bytes_allocated") or 0)
        if in_use > peak:
            peak, at_peak = in_use, dict(live)
    return peak, sorted(at_peak.values(), reverse=True)


def format_live(peak: int, tensors: list[tuple[int, str, str]], top: int = 30) -> str:
    """The live set at the peak, summed by op type (the op name's last part)."""
    by_kind = collections.Counter()
    count = collections.Counter()
    for size, op, _ in tensors:
        kind = op.rsplit("/", 1)[-1].rstrip("_0123456789") or "?"
        by_kind[kind] += size
        count[kind] += 1
    rows = [f"peak in use {peak / 1e9:.2f} GB; alive then, by the op that made them:"]
    for kind, size in by_kind.most_common(top):
        rows.append(f"  {size / 1e6:10.1f} MB  {count[kind]:4d} tensors  {kind}")
    rows.append("largest:")
    for size, op, shape in tensors[:10]:
        rows.append(f"  {size / 1e6:10.1f} MB  {shape:<20} {op}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(format_live(*live_at_peak(sys.argv[1])))
