"""Import a SimCLR model released by the authors (their TF2 checkpoint or SavedModel).

Usage:
  python tools/import_checkpoint.py --checkpoint=r50_1x_sk0/saved_model --out=runs/r50_1x_sk0
  python tools/import_checkpoint.py --checkpoint=PATH/ckpt-1234 --out=DIR \
      [--ft_proj_selector=N] [--image_size=N]

--checkpoint is what google-research/simclr's TF2 code writes or publishes: a checkpoint
prefix (`ckpt-N`), a directory with a `checkpoint` file, or a SavedModel directory
(`.../saved_model/` or `.../saved_model/<step>/`). The architecture is read from the
variables (depth, width, stem, selective kernels, squeeze-excitation, heads); what they
cannot tell comes from the flags: --ft_proj_selector (which projection-head layer their
supervised head reads; 0 = h, their default) and --image_size (224, or 32 for a CIFAR stem).

Writes into --out this project's checkpoint `ckpt-<their step>` with `config.json` (so
`run.py --checkpoint=OUT`, `tools/linear_eval.py --checkpoint=OUT` and
`tools/knn_eval.py --checkpoint=OUT` take it) and the SavedModel `saved_model/<step>/`
(`tf.saved_model.load`, TF Hub, `keras.layers.TFSMLayer`). Prints what it found. From a
SavedModel of theirs, the imported model's outputs are first checked against what their
SavedModel computes on random images, and nothing is written unless they agree.
A checkpoint that does not match their layout stops with one line naming the variable,
exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the authors' checkpoint or export")
    parser.add_argument("--out", required=True, help="directory to write this project's copy to")
    parser.add_argument(
        "--ft_proj_selector",
        type=int,
        default=0,
        help="projection-head layer their supervised head reads (0 = h)",
    )
    parser.add_argument(
        "--image_size", type=int, default=0, help="224, or 32 for a CIFAR stem (default)"
    )
    args = parser.parse_args()
    if args.ft_proj_selector < 0 or args.image_size < 0:
        sys.stderr.write(
            "import_checkpoint.py: --ft_proj_selector and --image_size must be >= 0.\n"
        )
        return 2

    from simclr_tf2.checkpoints import import_authors_checkpoint
    from simclr_tf2.config import ConfigError

    try:
        imported = import_authors_checkpoint(
            args.checkpoint,
            args.out,
            ft_proj_selector=args.ft_proj_selector,
            image_size=args.image_size or None,
        )
    except ConfigError as error:
        sys.stderr.write(f"import_checkpoint.py: {error}\n")
        return 2
    released, config = imported.released, imported.config
    selector, size = config.model.ft_proj_selector, config.data.image_size
    arch = released.architecture
    found = released.variables
    heads = []
    if arch.proj_head_mode != "none":
        heads.append(f"projection head: {arch.num_proj_layers} layers to {arch.proj_out_dim}")
    else:
        heads.append("no projection head")
    if arch.num_classes:
        heads.append(
            f"supervised head: {arch.num_classes} classes on "
            + ("h" if not selector else f"head layer {selector}")
        )
    else:
        heads.append("no supervised head")
    print(f"Read      {found.path} ({found.kind}, step {found.global_step})")
    print(f"Found     {arch.describe()}")
    print(f"          {released.num_params:,} parameters; " + "; ".join(heads))
    fixed = {**arch.flags(), "image_size": size}
    if selector:
        fixed["ft_proj_selector"] = selector
    print("Flags     " + " ".join(f"--{k}={v}" for k, v in fixed.items()))
    if imported.differences:
        compared = ", ".join(f"{k} {v:.1e}" for k, v in imported.differences.items())
        print(f"Checked   against their SavedModel on random images (relative): {compared}")
    print(f"Wrote     {imported.checkpoint}  (run.py / tools --checkpoint={args.out})")
    print(f"          {os.path.join(args.out, 'config.json')}  (image_size {size})")
    print(f"          {imported.export}  (SavedModel)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
