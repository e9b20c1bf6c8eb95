"""Finding and reading a checkpoint or SavedModel written by the SimCLR authors' TF2 code.

google-research/simclr (`tf2/`) saves `tf.train.Checkpoint(model=..., global_step=...,
optimizer=...)` through a CheckpointManager (`ckpt-N.index` + data, a `checkpoint` file),
and exports a `tf.Module` holding the same model as a SavedModel (`saved_model/<step>/`),
which is also how the released models are published. In both, the model's variables sit
in an object graph below `model/`: `resnet_model/...`, `_projection_head/...`,
`supervised_head/...`, following the attribute names and list indices of their layers.

A checkpoint names each variable by that path; a SavedModel names many of them by an
aggregate list instead (`trainable_variables_list/17`, `model/resnet_model/variables/3`).
Both carry the whole object graph, though, so the layer path of every variable is read
from the graph itself (`TrackableObjectGraph`), skipping those aggregate edges: the two
forms read into the same `{path: variable}` view.

This module reads; it builds nothing (see `simclr_tf2.compat.layout`).
"""

from __future__ import annotations

import dataclasses
import os
import re

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# Edges of the object graph that list variables a second time (Keras layer
# attributes and the authors' export module); a layer path never goes through them.
_ALIAS_EDGES = frozenset(
    {
        "variables",
        "trainable_variables",
        "non_trainable_variables",
        "trainable_weights",
        "non_trainable_weights",
        "weights",
        "regularization_losses",
        "keras_api",
        "trainable_variables_list",
    }
)


class CompatError(ValueError):
    """The authors' checkpoint cannot be read into this project's model; the message says why."""


@dataclasses.dataclass(frozen=True)
class AuthorsVariables:
    """The variables of the authors' model found at a path.

    Attributes:
        path: what the user gave.
        prefix: the checkpoint prefix read (for a SavedModel, its `variables/variables`).
        kind: "checkpoint" or "saved_model".
        global_step: the checkpoint's `global_step`; for a SavedModel the step in its
            directory name (`saved_model/<step>`), else 0.
        shapes: layer path below `model/` (e.g. `resnet_model/initial_conv_relu_max_pool/0/
            conv2d/kernel`) -> shape.
        keys: layer path -> the checkpoint key its value is stored under.
    """

    path: str
    prefix: str
    kind: str
    global_step: int
    shapes: dict[str, tuple[int, ...]]
    keys: dict[str, str]

    def reader(self):
        """A `tf.train.CheckpointReader` of the values: `.get_tensor(self.keys[path])`."""
        return tf.train.load_checkpoint(self.prefix)


def _saved_model_dir(path: str) -> str | None:
    """`path` if it is a SavedModel, else the newest `<path>[/saved_model]/<step>` one."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    for root in (os.path.join(path, "saved_model"), path):
        if not tf.io.gfile.isdir(root):
            continue
        if tf.io.gfile.exists(os.path.join(root, "saved_model.pb")):
            return root
        steps = [n.rstrip("/") for n in tf.io.gfile.listdir(root) if re.fullmatch(r"\d+/?", n)]
        for step in sorted(steps, key=int, reverse=True):
            candidate = os.path.join(root, step)
            if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")):
                return candidate
    return None


def locate(path: str) -> tuple[str, str] | None:
    """(kind, checkpoint prefix) of the checkpoint or SavedModel at `path`, or None.

    `path` may be a checkpoint prefix (`.../ckpt-1234`), a directory with a `checkpoint`
    file (its newest checkpoint), a SavedModel directory, or a directory holding
    `saved_model/<step>/` (the newest one).
    """
    if tf.io.gfile.exists(path + ".index"):
        return "checkpoint", path
    if not tf.io.gfile.isdir(path):
        return None
    latest = tf.train.latest_checkpoint(path)
    if latest:
        return "checkpoint", latest
    saved = _saved_model_dir(path)
    if saved is not None:
        return "saved_model", os.path.join(saved, "variables", "variables")
    return None


def is_authors_format(prefix: str) -> bool:
    """Whether the checkpoint at `prefix` holds the authors' `model/resnet_model`."""
    try:
        names = tf.train.list_variables(prefix)
    except (tf.errors.OpError, ValueError):
        return False
    return any(name.startswith("model/resnet_model/") for name, _ in names)


def find(path: str) -> tuple[str, str] | None:
    """`locate(path)` when what is there is the authors' format, else None."""
    found = locate(path)
    if found is None or not is_authors_format(found[1]):
        return None
    return found


def _layer_paths(reader) -> dict[str, str]:
    """Layer path below `model/` -> checkpoint key, for every variable of the model."""
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_GRAPH_KEY))
    model = next((c.node_id for c in graph.nodes[0].children if c.local_name == "model"), None)
    if model is None:
        return {}
    paths: dict[str, str] = {}
    seen = {model}
    frontier = [(model, "")]
    # Breadth first, so every variable is named by its shortest layer path.
    while frontier:
        following = []
        for node_id, prefix in frontier:
            node = graph.nodes[node_id]
            for attribute in node.attributes:
                if attribute.name == "VARIABLE_VALUE":
                    paths[prefix.rstrip("/")] = attribute.checkpoint_key
            for child in node.children:
                if child.local_name in _ALIAS_EDGES or child.node_id in seen:
                    continue
                seen.add(child.node_id)
                following.append((child.node_id, f"{prefix}{child.local_name}/"))
        frontier = following
    return paths


def read_variables(path: str) -> AuthorsVariables:
    """The authors' model variables at `path` (see `locate` for what `path` may be).

    Raises:
        CompatError: nothing readable there, or not the authors' format.
    """
    found = locate(path)
    if found is None:
        raise CompatError(
            f"{path}: no checkpoint or SavedModel there (give a prefix such as .../ckpt-1234, "
            "a directory with a 'checkpoint' file, or a SavedModel directory)."
        )
    kind, prefix = found
    reader = tf.train.load_checkpoint(prefix)
    keys = _layer_paths(reader)
    if not any(name.startswith("resnet_model/") for name in keys):
        raise CompatError(
            f"{path}: not a checkpoint of the authors' TF2 code (google-research/simclr): "
            "no variables under model/resnet_model/."
        )
    shape_of = reader.get_variable_to_shape_map()
    shapes = {name: tuple(int(d) for d in shape_of[key]) for name, key in keys.items()}
    if kind == "checkpoint" and reader.has_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE"):
        step = int(reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE"))
    else:
        name = os.path.basename(os.path.dirname(os.path.dirname(prefix)))
        step = int(name) if name.isdigit() else 0
    return AuthorsVariables(path, prefix, kind, step, shapes, keys)
