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
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr_tf2.knn import knn_accuracy  # noqa: E402
from tools.linear_eval import add_source_args, load_features  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(parser)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.1)
    args = parser.parse_args()

    if args.k < 1 or args.temperature <= 0:
        sys.stderr.write(f"knn_eval.py: --k={args.k} must be >= 1 and --temperature > 0.\n")
        return 2
    started = time.time()
    loaded = load_features(args, "knn_eval.py", "kNN evaluation")
    if loaded == 2:
        return 2
    export, (bank_x, bank_y), (query_x, query_y), num_classes, _ = loaded
    accuracy = knn_accuracy(bank_x, bank_y, query_x, query_y, num_classes, args.k, args.temperature)
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
