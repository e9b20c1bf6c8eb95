"""Weighted kNN evaluation of an exported SimCLR encoder (the SSL literature's monitor).

Usage:
  python tools/knn_eval.py --saved_model=/tmp/simclr_quickstart --dataset=digits \
      --train_split=train --eval_split=test

--saved_model is an export (`model_dir/saved_model/<step>`) or a model_dir (its newest
export). Features are the export's `final_avg_pool` on centre-cropped images; each eval
image is classified by its --k nearest training features (cosine similarity, votes
weighted by exp(similarity / --temperature)). Prints top-1; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from simclr_tf2.data.sources import DataError, load_source  # noqa: E402
from simclr_tf2.export import latest_export  # noqa: E402
from simclr_tf2.knn import knn_accuracy  # noqa: E402
from tools.linear_eval import features  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved_model", required=True, help="an export or a model_dir")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--eval_dataset", default=None, help="default: --dataset")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="test")
    parser.add_argument("--image_size", type=int, default=0, help="default: as linear_eval.py")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.1)
    args = parser.parse_args()

    if args.k < 1 or args.temperature <= 0 or args.batch_size < 1:
        sys.stderr.write("knn_eval.py: --k and --batch_size must be >= 1, --temperature > 0.\n")
        return 2
    export = latest_export(args.saved_model)
    if export is None:
        sys.stderr.write(
            f"knn_eval.py: --saved_model={args.saved_model}: no SavedModel there (give "
            "model_dir/saved_model/<step> or a model_dir holding exports).\n"
        )
        return 2
    try:
        train_source = load_source(args.dataset, args.train_split, args.data_dir)
        eval_source = load_source(
            args.eval_dataset or args.dataset,
            args.eval_split,
            args.data_dir,
            split_flag="--eval_split",
        )
        train_source.require_classes("kNN evaluation (--dataset)")
        eval_source.require_classes("kNN evaluation (--eval_dataset)")
    except DataError as error:
        sys.stderr.write(f"knn_eval.py: {error}\n")
        return 2
    image_size = args.image_size
    if not image_size:
        side = min(train_source.image_shape[:2]) if train_source.image_shape else 224
        image_size = side if side <= 32 else 224

    encoder = tf.saved_model.load(export)
    started = time.time()
    bank_x, bank_y = features(encoder, train_source, image_size, args.batch_size, "train")
    query_x, query_y = features(encoder, eval_source, image_size, args.batch_size, "eval")
    accuracy = knn_accuracy(
        bank_x, bank_y, query_x, query_y, train_source.num_classes, args.k, args.temperature
    )
    result = {
        "saved_model": export,
        "knn_top_1_accuracy": accuracy,
        "k": args.k,
        "temperature": args.temperature,
        "train_examples": len(bank_y),
        "eval_examples": len(query_y),
        "seconds": round(time.time() - started, 1),
    }
    print(f"{'export':<20}{export}")
    print(f"{'knn_top_1_accuracy':<20}{accuracy:.4f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
