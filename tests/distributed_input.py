"""Prints, as JSON, the labels each of N logical CPU replicas receives per step.

Run as a script (one strategy per process): `python tests/distributed_input.py
DATA.npz --replicas 4 --global-batch 16 --steps 4 --mode eval`.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr_tf2.data.pipeline import distributed_dataset  # noqa: E402
from simclr_tf2.data.sources import load_source  # noqa: E402
from simclr_tf2.distribute import cpu_strategy  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--mode", default="eval")
    args = parser.parse_args()

    strategy = cpu_strategy(args.replicas)
    dataset = distributed_dataset(
        strategy, load_source(args.data), args.global_batch, image_size=8, mode=args.mode
    )
    steps = []
    for step, (views, labels) in enumerate(dataset):
        if step == args.steps:
            break
        local_views = strategy.experimental_local_results(views)
        local_labels = strategy.experimental_local_results(labels)
        steps.append(
            {
                "labels": [[int(x) for x in t.numpy()] for t in local_labels],
                "devices": [t.device for t in local_views],
                "shapes": [list(t.shape) for t in local_views],
            }
        )
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
