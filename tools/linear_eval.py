"""Linear evaluation of a SimCLR encoder: a linear classifier on its frozen features.

Usage:
  python tools/linear_eval.py --saved_model=/tmp/simclr_quickstart --dataset=digits \
      --train_split=train --eval_split=test
  python tools/linear_eval.py --saved_model=RUN/saved_model/1000 \
      --dataset=../shared/data/cifar10/train.npz \
      --eval_dataset=../shared/data/cifar10/test_jpeg.npz

--saved_model is an export (`model_dir/saved_model/<step>`) or a model_dir (its newest
export); --checkpoint instead takes a checkpoint prefix or a model_dir (its newest
checkpoint, the model rebuilt from its config.json). The authors' released models
(google-research/simclr TF2) work as they are: their SavedModel as --saved_model, their
checkpoint as --checkpoint. Features are the encoder's
`final_avg_pool` (h) on centre-cropped images (inference mode), computed once; a linear
classifier is trained on them with SGD, Nesterov momentum 0.9 and a cosine learning-rate
decay, then top-1 / top-5 on the eval split are printed. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from simclr_tf2.checkpoints import load_encoder  # noqa: E402
from simclr_tf2.config import ConfigError  # noqa: E402
from simclr_tf2.data.sources import DataError, Source, load_source  # noqa: E402
from simclr_tf2.data.splits import require_held_out  # noqa: E402
from simclr_tf2.embeddings import embed_source  # noqa: E402


def progress_line(label: str, total: int):
    """A progress callback (images done) drawing one line on stderr: done/total, images/s."""
    started = time.time()

    def show(done: int) -> None:
        rate = done / max(time.time() - started, 1e-9)
        end = "\n" if done >= total else ""
        print(f"\r{label}: {done}/{total} images ({rate:.0f}/s)", end=end, file=sys.stderr)
        sys.stderr.flush()

    return show


def features(encoder, source: Source, image_size: int, batch_size: int, label: str):
    """(h, labels) of every example of `source`, with a progress line."""
    embedded = embed_source(
        encoder, source, image_size, batch_size, progress=progress_line(label, source.num_examples)
    )
    return embedded.features, embedded.labels


def train_linear(
    train_x: np.ndarray,
    train_y: np.ndarray,
    num_classes: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
) -> keras.Model:
    """A Dense layer trained with SGD + Nesterov momentum and cosine decay."""
    keras.utils.set_random_seed(seed)
    steps = epochs * max(1, int(np.ceil(len(train_x) / batch_size)))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    model = keras.Sequential(
        [
            keras.Input(train_x.shape[1:]),
            keras.layers.Dense(num_classes, kernel_regularizer=regularizer),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(train_x, train_y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    return model


def top_k(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    best = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(best == labels[:, None], axis=1)))


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """The export and data flags linear_eval.py and knn_eval.py share."""
    parser.add_argument("--saved_model", help="an export, or a model_dir holding exports")
    parser.add_argument(
        "--checkpoint",
        help="instead of --saved_model: a checkpoint prefix, or a model_dir (its newest "
        "checkpoint; the model is rebuilt from the model_dir's config.json)",
    )
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--eval_dataset", default=None, help="default: --dataset")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="test")
    parser.add_argument(
        "--image_size", type=int, default=0, help="default: the images' side if <= 32, else 224"
    )
    parser.add_argument("--batch_size", type=int, default=256)


def image_size_for(source: Source) -> int:
    """The images' side if it is 32 px or less, else 224."""
    side = min(source.image_shape[:2]) if source.image_shape else 224
    return side if side <= 32 else 224


def load_features(args: argparse.Namespace, tool: str, purpose: str):
    """(export, train (x, y), eval (x, y), classes, image size), or an exit status 2
    after one line on stderr naming the flag."""
    if args.batch_size <= 0:
        sys.stderr.write(f"{tool}: --batch_size={args.batch_size}: must be positive.\n")
        return 2
    try:
        encoder = load_encoder(args.saved_model, args.checkpoint)
    except ConfigError as error:
        sys.stderr.write(f"{tool}: {error}\n")
        return 2
    export = encoder.where
    try:
        train_source = load_source(args.dataset, args.train_split, args.data_dir)
        eval_source = load_source(
            args.eval_dataset or args.dataset,
            args.eval_split,
            args.data_dir,
            split_flag="--eval_split",
        )
        train_source.require_classes(f"{purpose} (--dataset)")
        eval_source.require_classes(f"{purpose} (--eval_dataset)")
        require_held_out(train_source, eval_source, purpose)
    except DataError as error:
        sys.stderr.write(f"{tool}: {error}\n")
        return 2
    image_size = args.image_size or image_size_for(train_source)
    train = features(encoder, train_source, image_size, args.batch_size, "train")
    evaluation = features(encoder, eval_source, image_size, args.batch_size, "eval")
    if evaluation[1].max() >= train_source.num_classes:
        sys.stderr.write(
            f"{tool}: the eval labels go up to {evaluation[1].max()}, but the training set "
            f"has {train_source.num_classes} classes.\n"
        )
        return 2
    return export, train, evaluation, train_source.num_classes, image_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(parser)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--learning_rate", type=float, default=0.1)
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.epochs <= 0:
        sys.stderr.write(f"linear_eval.py: --epochs={args.epochs}: must be positive.\n")
        return 2
    started = time.time()
    loaded = load_features(args, "linear_eval.py", "linear evaluation")
    if loaded == 2:
        return 2
    export, (train_x, train_y), (eval_x, eval_y), num_classes, image_size = loaded
    # Standardise with the training features' statistics (the classifier stays linear).
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, eval_x = (train_x - mean) / std, (eval_x - mean) / std
    classifier = train_linear(
        train_x,
        train_y,
        num_classes,
        args.epochs,
        args.batch_size,
        args.learning_rate,
        args.weight_decay,
        args.seed,
    )
    logits = classifier.predict(eval_x, batch_size=1024, verbose=0)
    result = {
        "saved_model": export,
        "top_1_accuracy": top_k(logits, eval_y, 1),
        "top_5_accuracy": top_k(logits, eval_y, 5),
        "train_examples": len(train_y),
        "eval_examples": len(eval_y),
        "feature_dim": int(train_x.shape[1]),
        "image_size": image_size,
        "seconds": round(time.time() - started, 1),
    }
    print(f"{'export':<16}{export}")
    for key in ("top_1_accuracy", "top_5_accuracy", "train_examples", "eval_examples"):
        print(f"{key:<16}{result[key]}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
