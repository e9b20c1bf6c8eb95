"""The authors' TF2 model layout: the architecture its variables tell, and where each of
this project's variables sits in it.

Their layers keep sub-layers in Python lists, so a variable's path holds list indices
(`block_groups/0/layers/2/conv_relu_dropblock_layers/5/conv2d/kernel`); an index counts
layers without variables too (identity, padding, pooling, DropBlock). `their_layout`
walks a built `SimCLRModel` in the order their code builds the same network and yields
(their path, our variable) for every variable, which is the whole correspondence: the
import checks it in both directions (nothing missing, nothing left over, every shape).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from simclr_tf2.compat.reader import AuthorsVariables, CompatError
from simclr_tf2.models.resnet import (
    BLOCK_SPECS,
    BottleneckBlock,
    FixedPaddingConv2D,
    SelectiveKernelConv2D,
)

# The authors' defaults for what the variables cannot tell (their run.py flags).
DEFAULT_SK_RATIO = 0.0625
SK_MIN_DIM = 32

_GAP = None  # a layer of theirs without variables (identity, padding, pooling, DropBlock)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the authors' variables say about their model (this project's names)."""

    resnet_depth: int
    width_multiplier: float
    cifar_stem: bool
    sk_ratio: float
    se_ratio: float
    proj_head_mode: str
    proj_out_dim: int
    num_proj_layers: int
    num_classes: int | None

    def flags(self) -> dict:
        """The run.py flags (Config fields) this architecture fixes, with their values."""
        fixed = dict(
            resnet_depth=self.resnet_depth,
            width_multiplier=self.width_multiplier,
            sk_ratio=self.sk_ratio,
            se_ratio=self.se_ratio,
            proj_head_mode=self.proj_head_mode,
        )
        if self.proj_head_mode != "none":
            fixed.update(proj_out_dim=self.proj_out_dim, num_proj_layers=self.num_proj_layers)
        return fixed

    def describe(self) -> str:
        width = f"{self.width_multiplier:g}x"
        parts = [f"ResNet-{self.resnet_depth} {width}"]
        if self.sk_ratio:
            parts.append(f"selective kernels (sk_ratio {self.sk_ratio:g})")
        if self.se_ratio:
            parts.append(f"squeeze-excitation (se_ratio {self.se_ratio:g})")
        parts.append("CIFAR stem" if self.cifar_stem else "ImageNet stem")
        if self.proj_head_mode == "none":
            parts.append("no projection head")
        else:
            parts.append(f"{self.num_proj_layers}-layer projection head to {self.proj_out_dim}")
        if self.num_classes:
            parts.append(f"supervised head of {self.num_classes} classes")
        else:
            parts.append("no supervised head")
        return ", ".join(parts)


def _require(found: AuthorsVariables, name: str, what: str) -> tuple[int, ...]:
    if name not in found.shapes:
        raise CompatError(
            f"{found.path}: variable model/{name} is missing ({what}); not the layout "
            "of the authors' TF2 code, or a damaged checkpoint."
        )
    return found.shapes[name]


def _indices(names, prefix: str) -> list[int]:
    """The list indices that follow `prefix` in `names`, sorted."""
    found = set()
    for name in names:
        if name.startswith(prefix):
            head = name[len(prefix) :].split("/", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def infer_architecture(found: AuthorsVariables) -> Architecture:
    """The architecture the authors' variables describe.

    Raises:
        CompatError: naming the variable that is missing or does not fit a layout
            of their code.
    """
    names = found.shapes
    stem = "resnet_model/initial_conv_relu_max_pool/"
    first = _require(found, f"{stem}0/conv2d/kernel", "the stem's first convolution")
    resnet_d = f"{stem}4/conv2d/kernel" in names  # ResNet-D's third stem convolution
    last = names[f"{stem}4/conv2d/kernel"] if resnet_d else first
    cifar_stem = first[0] == 3 and not resnet_d
    width_multiplier = last[-1] / 64
    if width_multiplier == int(width_multiplier):
        width_multiplier = int(width_multiplier)

    groups = "resnet_model/block_groups/"
    counts = tuple(len(_indices(names, f"{groups}{g}/layers/")) for g in range(4))
    bottleneck = any("/conv_relu_dropblock_layers/" in n for n in names)
    kind = "bottleneck" if bottleneck else "residual"
    depths = [d for d, spec in BLOCK_SPECS.items() if spec == (kind, counts)]
    if not depths:
        raise CompatError(
            f"{found.path}: {kind} blocks {counts} per group under model/{groups} match no "
            f"ResNet depth ({sorted(BLOCK_SPECS)})."
        )

    sk = [n for n in names if n.endswith("/conv2d_0/kernel") and n.startswith(groups)]
    shortcut = "projection_layers" if bottleneck else "shortcut_layers"
    resnet_d_shortcut = f"{groups}0/layers/0/{shortcut}/1/conv2d/kernel" in names
    sk_ratio = 0.0
    if sk or resnet_d_shortcut or resnet_d:
        sk_ratio = DEFAULT_SK_RATIO
        # The descriptor is max(int(filters * sk_ratio), 32) wide: wider tells the ratio.
        for name in sk:
            filters, width = names[name][2], names[name][3]
            if width > SK_MIN_DIM:
                sk_ratio = width / filters
                break

    se_ratio = 0.0
    block = f"{groups}0/layers/0/"
    se = [n for n in names if n.startswith(block) and n.endswith("/se_reduce/kernel")]
    if se:
        # The reduction is max(1, int(filters * se_ratio)) of the block's base width.
        se_ratio = names[se[0]][3] / (64 * width_multiplier)

    head = "_projection_head/linear_layers/"
    layers = _indices(names, head)
    if layers:
        proj_head_mode = "nonlinear"
        last_layer = f"{head}{layers[-1]}/dense/kernel"
        out = _require(found, last_layer, "the projection head's last layer")
        proj_out_dim = out[1]
    else:
        proj_head_mode, proj_out_dim = "none", 128
    sup = names.get("supervised_head/linear_layer/dense/kernel")
    return Architecture(
        resnet_depth=depths[0],
        width_multiplier=width_multiplier,
        cifar_stem=cifar_stem,
        sk_ratio=sk_ratio,
        se_ratio=se_ratio,
        proj_head_mode=proj_head_mode,
        proj_out_dim=proj_out_dim,
        num_proj_layers=max(1, len(layers)),
        num_classes=sup[1] if sup else None,
    )


def _norm(norm, path: str) -> Iterator[tuple[str, object]]:
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        variable = getattr(norm, name, None)
        if variable is not None:
            yield f"{path}/bn/{name}", variable


def _layer(layer, path: str) -> Iterator[tuple[str, object]]:
    """(their path, our variable) of one of their list entries."""
    if layer is _GAP:
        return
    if isinstance(layer, FixedPaddingConv2D):
        yield f"{path}/conv2d/kernel", layer.conv.kernel
    elif isinstance(layer, SelectiveKernelConv2D):
        yield f"{path}/conv2d_fixed_padding/conv2d/kernel", layer.conv.conv.kernel
        yield from _norm(layer.norm, f"{path}/batch_norm_relu")
        yield f"{path}/conv2d_0/kernel", layer.reduce.kernel
        yield from _norm(layer.reduce_norm, f"{path}/batch_norm_relu_1")
        yield f"{path}/conv2d_1/kernel", layer.expand.kernel
    elif hasattr(layer, "excite"):  # SqueezeExcitation
        for ours, theirs in ((layer.squeeze, "se_reduce"), (layer.excite, "se_expand")):
            yield f"{path}/{theirs}/kernel", ours.kernel
            yield f"{path}/{theirs}/bias", ours.bias
    else:  # a batch norm
        yield from _norm(layer, path)


def _listed(layers: list, path: str) -> Iterator[tuple[str, object]]:
    for i, layer in enumerate(layers):
        yield from _layer(layer, f"{path}/{i}")


def _block(block, path: str) -> Iterator[tuple[str, object]]:
    shortcut = [block.shortcut_pad, block.shortcut_pool, block.shortcut_conv, block.shortcut_norm]
    shortcut = [_GAP for layer in shortcut[:2] if layer is not None] + shortcut[2:]
    if isinstance(block, BottleneckBlock):
        (conv1, conv2, conv3), (bn1, bn2, bn3) = block.convs, block.norms
        spatial = [conv2] if bn2 is None else [conv2, bn2]  # SK normalises itself
        main = [conv1, bn1, _GAP, *spatial, _GAP, conv3, bn3, _GAP]
        if block.se is not None:
            main.append(block.se)
        yield from _listed(main, f"{path}/conv_relu_dropblock_layers")
        if block.use_projection:
            yield from _listed(shortcut, f"{path}/projection_layers")
    else:
        (conv1, conv2), (bn1, bn2) = block.convs, block.norms
        yield from _listed([conv1, bn1, conv2, bn2], f"{path}/conv2d_bn_layers")
        if block.use_projection:
            yield from _listed(shortcut, f"{path}/shortcut_layers")
        if block.se is not None:
            yield from _layer(block.se, f"{path}/se_layer")


def their_layout(model, *, supervised_head: bool = True) -> Iterator[tuple[str, object]]:
    """(their path below `model/`, our variable) for every variable of a built SimCLRModel.

    The order and indices are those of the authors' `resnet.py` / `model.py` lists:
    the stem (conv, identity, bn[, max-pool, identity]; ResNet-D: conv, bn, conv, bn,
    conv, ...), then per block the main path and the shortcut, then the heads.
    """
    encoder = model.encoder
    stem = []
    for conv, norm in encoder.stem_extra:
        stem += [conv, norm]
    stem += [encoder.stem_conv, _GAP, encoder.stem_norm]
    yield from _listed(stem, "resnet_model/initial_conv_relu_max_pool")
    for g, group in enumerate(encoder.block_groups):
        for b, block in enumerate(group.blocks):
            yield from _block(block, f"resnet_model/block_groups/{g}/layers/{b}")
    for j, layer in enumerate(model.projection_head.layers_):
        path = f"_projection_head/linear_layers/{j}"
        yield f"{path}/dense/kernel", layer.dense.kernel
        yield from _norm(layer.norm, f"{path}/bn_relu")
    if supervised_head and model.supervised_head is not None:
        dense = model.supervised_head
        yield "supervised_head/linear_layer/dense/kernel", dense.kernel
        yield "supervised_head/linear_layer/dense/bias", dense.bias
