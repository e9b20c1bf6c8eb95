"""Strategies from plain arguments, and logical CPU devices for testing.

`build_strategy` turns `--strategy` and its companions into a
`tf.distribute.Strategy`; `Cluster` says which worker this process is, so
that only the chief writes checkpoints, summaries and exports.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import tensorflow as tf
from absl import logging

from simclr_tf2.config import STRATEGIES


class StrategyError(ValueError):
    """The strategy asked for cannot be built here; the message says why and what to do."""


def configure_logical_cpus(count: int) -> list[str]:
    """Splits the CPU into `count` logical devices and returns their names.

    Must run before TensorFlow initialises its devices (before the first op),
    so call it first thing in a process.
    """
    _split_cpu(count)
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _split_cpu(count: int) -> None:
    # Unlike listing logical devices, this leaves TF's runtime uninitialised,
    # which joining a multi-worker cluster needs.
    if count < 1:
        raise ValueError(f"num_logical_cpus={count} must be >= 1.")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"Cannot split the CPU into {count} devices: TensorFlow has already "
            "initialised its devices in this process; do it before any TF op."
        ) from error


def cpu_strategy(num_replicas: int) -> tf.distribute.Strategy:
    """MirroredStrategy over `num_replicas` logical CPUs (the default strategy for 1)."""
    if num_replicas == 1:
        return tf.distribute.get_strategy()
    devices = configure_logical_cpus(num_replicas)
    return tf.distribute.MirroredStrategy(devices)


def tf_config() -> dict:
    """The parsed TF_CONFIG environment variable ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise StrategyError(f"TF_CONFIG is not valid JSON ({error}); see the README.") from None
    if not isinstance(config, dict):
        raise StrategyError("TF_CONFIG must be a JSON object with 'cluster' and 'task'.")
    return config


def _cluster_size(config: dict) -> int:
    cluster = config.get("cluster", {})
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker"))


@contextlib.contextmanager
def _local_cpu_replicas(count: int):
    """Makes MultiWorkerMirroredStrategy use `count` logical CPUs per worker.

    On CPUs TensorFlow's strategy places one replica per worker; several per
    worker is what lets a test run 2 workers x 2 replicas on one machine. The
    strategy's own device discovery is swapped for the duration of its
    construction (a private hook: checked against TF 2.21).
    """
    from tensorflow.python.distribute import collective_all_reduce_strategy as cars

    extended = cars.CollectiveAllReduceExtended
    original = extended._initialize_local_devices

    def logical_cpus(self, cluster_resolver, worker_device):
        devices = tuple(f"{worker_device}/device:CPU:{i}" for i in range(count))
        return devices, "CPU"

    extended._initialize_local_devices = logical_cpus
    try:
        yield
    finally:
        extended._initialize_local_devices = original


def _bound_cluster_registration(timeout_s: int) -> None:
    """Makes a worker give up when the cluster is not whole within `timeout_s`.

    TensorFlow's coordination service otherwise waits for missing workers
    for an hour. Configured the way MultiWorkerMirroredStrategy would, plus
    the timeout; the strategy keeps a configuration it finds in place.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = multi_worker_util.normalize_cluster_spec(resolver.cluster_spec())
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
        for job in ("chief", "worker")
        if job in spec.jobs
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        cluster_register_timeout_in_ms=int(timeout_s * 1000),
        coordinated_jobs=jobs,
    )
    # Without the barrier, the timeout is not applied while waiting for peers.
    context.context().coordination_service.cluster_register_with_barrier = True


def _multi_worker_strategy(cpus: int, cluster_timeout: int) -> tf.distribute.Strategy:
    config = tf_config()
    if not config.get("cluster") or "task" not in config:
        raise StrategyError(
            "--strategy=multi_worker needs TF_CONFIG with 'cluster' and 'task' (see the "
            "README's multi-worker example)."
        )
    task = config["task"]
    if cluster_timeout:
        _bound_cluster_registration(cluster_timeout)
    try:
        with _local_cpu_replicas(cpus) if cpus > 1 else contextlib.nullcontext():
            return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as error:
        first = next((line for line in error.message.splitlines() if line.strip()), "")
        why = first[:160]
        if "timed out" in first.lower():
            why = f"not every worker joined within --cluster_timeout={cluster_timeout} s"
        name = f"{task.get('type')} {task.get('index')}"
        raise StrategyError(
            f"TF_CONFIG task {name}: could not join the cluster ({why}). Start every task "
            f"listed in TF_CONFIG's cluster {config['cluster']}, each with its own task index, "
            "and check that this task's address is free."
        ) from None


def _tpu_strategy(
    tpu_name: str | None, tpu_zone: str | None, gcp_project: str | None, master: str | None
) -> tf.distribute.Strategy:
    target = tpu_name or master or ""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=target, zone=tpu_zone, project=gcp_project
        )
        if target not in ("", "local"):
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StrategyError(
            f"--strategy=tpu: no TPU reachable (tpu_name={tpu_name!r}, tpu_zone={tpu_zone!r}, "
            f"gcp_project={gcp_project!r}, master={master!r}): {first[:200].rstrip('.')}. Run "
            "on a Cloud TPU "
            "VM (--tpu_name=local) or name a TPU node with --tpu_name/--tpu_zone/--gcp_project."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def resolve_kind(
    strategy: str = "auto",
    use_tpu: bool = False,
    tpu_name: str | None = None,
    master: str | None = None,
) -> str:
    """The concrete strategy `strategy` stands for in this environment."""
    if strategy not in STRATEGIES:
        raise StrategyError(f"--strategy={strategy}: use one of {', '.join(STRATEGIES)}.")
    if strategy != "auto":
        return strategy
    if use_tpu or tpu_name or master:
        return "tpu"
    if _cluster_size(tf_config()) > 1:
        return "multi_worker"
    return "mirrored"


def build_strategy(
    strategy: str = "auto",
    num_logical_cpus: int = 0,
    use_tpu: bool = False,
    tpu_name: str | None = None,
    tpu_zone: str | None = None,
    gcp_project: str | None = None,
    master: str | None = None,
    cluster_timeout: int = 900,
) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` a run asks for.

    Call it first in a process: splitting the CPU (`num_logical_cpus`) and
    joining a cluster must happen before TensorFlow initialises its devices.

    Args:
        strategy: "auto" (a TPU when `use_tpu`/`tpu_name` is given,
            MultiWorkerMirroredStrategy when TF_CONFIG names several workers,
            MirroredStrategy over the local GPUs or logical CPUs when there are
            several, else the default strategy), "one_device", "mirrored",
            "multi_worker" (from TF_CONFIG) or "tpu".
        num_logical_cpus: with no GPU, split the CPU into this many devices, one
            replica each (per worker with "multi_worker"); 0 or 1 = one.
        use_tpu, tpu_name, tpu_zone, gcp_project, master: where the TPU is
            (`tpu_name="local"` on a Cloud TPU VM).
        cluster_timeout: seconds a worker waits for the whole cluster to join
            before giving up (0 = TensorFlow's default, an hour).

    Raises:
        StrategyError: the strategy cannot be built here (bad TF_CONFIG, a
            cluster that did not come together, no TPU).
    """
    kind = resolve_kind(strategy, use_tpu, tpu_name, master)
    if num_logical_cpus < 0:
        raise StrategyError(f"--num_logical_cpus={num_logical_cpus}: must be >= 0.")
    if kind == "tpu":
        return _tpu_strategy(tpu_name, tpu_zone, gcp_project, master)
    gpus = tf.config.list_physical_devices("GPU")
    cpus = num_logical_cpus if num_logical_cpus > 1 and not gpus else 1
    if num_logical_cpus > 1 and gpus:
        logging.warning("--num_logical_cpus=%d ignored: GPUs are present.", num_logical_cpus)
    if cpus > 1:
        _split_cpu(cpus)
    if kind == "multi_worker":
        return _multi_worker_strategy(cpus, cluster_timeout)
    if kind == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    # mirrored (or auto on one host)
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if cpus > 1:
        names = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(names)
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in a run: only the chief writes the run's outputs."""

    is_chief: bool = True
    task_type: str | None = None
    task_id: int = 0
    num_workers: int = 1


def cluster_of(strategy: tf.distribute.Strategy) -> Cluster:
    """The Cluster of `strategy` (one chief for anything but multi-worker)."""
    extended = strategy.extended
    task_type = getattr(extended, "_task_type", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or task_type is None:
        return Cluster()
    task_id = int(extended._task_id or 0)
    is_chief = bool(extended.should_checkpoint)
    return Cluster(is_chief, task_type, task_id, int(extended._num_workers))


def describe(strategy: tf.distribute.Strategy) -> str:
    """One phrase for the startup log: the strategy, its workers and devices."""
    cluster = cluster_of(strategy)
    name = type(strategy).__name__
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        role = "chief" if cluster.is_chief else "non-chief"
        return (
            f"MultiWorkerMirroredStrategy ({cluster.num_workers} workers; this is "
            f"{cluster.task_type} {cluster.task_id}, the {role})"
        )
    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        return "the default strategy (one device)"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy has no device list
        return name
    return f"{name} ({', '.join(devices)})"
