"""Embeddings of every image of a data source, and the images most similar to a query.

Usage:
  python tools/embed.py --saved_model=/tmp/simclr_quickstart --dataset=/data/my_images \
      --out=embeddings.npz
  python tools/embed.py --checkpoint=/tmp/simclr_quickstart --dataset=/data/my_images \
      --out=embeddings.npz --query=/data/new.jpg --top_k=5

--saved_model / --checkpoint as for tools/linear_eval.py (an export or a model_dir; a
checkpoint prefix or a model_dir; the authors' releases too). --dataset is any source run.py
takes (an image folder, an .npz file, `digits`, a prepared TFDS dataset), --split one of its
splits. Images are prepared as evaluation prepares them (centre crop above 32 px, bicubic
resize to --image_size, by default the size the model was trained at) and embedded in
batches in inference mode. --out is an .npz file with `features` (N, D) float32, the
encoder's `final_avg_pool` (h); `projections` (N, P), `proj_head_output` (z), with
--projections; `paths` (an image folder's files) or `index` (the position in the source);
`labels` when the source has them. --query=IMAGE prints the --top_k images of the set most
similar to IMAGE (cosine similarity of h), and --out also holds them (`query_index`: rows of
`features`, `query_similarity`). The last line of output is one JSON object.
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

import numpy as np  # noqa: E402

TOOL = "embed.py"


def _fail(message: str) -> int:
    sys.stderr.write(f"{TOOL}: {message}\n")
    return 2


def _check_args(args: argparse.Namespace) -> str | None:
    """The first flag mistake, as one line, or None."""
    if not args.out and not args.query:
        return "give --out=FILE.npz (the embeddings), --query=IMAGE (similar images), or both."
    if args.out and not args.out.endswith(".npz"):
        return f"--out={args.out}: must end in .npz."
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        return f"--out={args.out}: its directory does not exist; create it first."
    for flag in ("batch_size", "top_k"):
        if getattr(args, flag) <= 0:
            return f"--{flag}={getattr(args, flag)}: must be positive."
    if args.image_size < 0:
        return f"--image_size={args.image_size}: must be positive (0: the model's)."
    if args.query and not os.path.isfile(args.query):
        return f"--query={args.query}: no such file."
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved_model", help="an export, or a model_dir holding exports")
    parser.add_argument(
        "--checkpoint",
        help="instead of --saved_model: a checkpoint prefix, or a model_dir (its newest "
        "checkpoint; the model is rebuilt from the model_dir's config.json)",
    )
    parser.add_argument("--dataset", default="digits", help="any source run.py takes")
    parser.add_argument("--split", default="train", help="the split (slices such as train[:10%%])")
    parser.add_argument("--data_dir", default=None, help="where TFDS keeps prepared datasets")
    parser.add_argument(
        "--skip_bad_images", action="store_true", help="image folders: skip and log bad files"
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=0,
        help="side the images are prepared to; default: the model's (else the images' side "
        "if <= 32, else 224)",
    )
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--projections", action="store_true", help="keep proj_head_output too")
    parser.add_argument("--out", help="the .npz file to write")
    parser.add_argument("--query", help="an image file: print the most similar images of the set")
    parser.add_argument("--top_k", type=int, default=5, help="how many similar images")
    args = parser.parse_args()

    mistake = _check_args(args)
    if mistake:
        return _fail(mistake)
    started = time.time()
    # After the flags are checked: a mistake is said at once, without loading TensorFlow.
    from simclr_tf2.checkpoints import load_encoder
    from simclr_tf2.config import ConfigError
    from simclr_tf2.data.files import check_image_file
    from simclr_tf2.data.sources import DataError, load_source
    from simclr_tf2.embeddings import embed_source, most_similar, prepare_file
    from tools.linear_eval import image_size_for, progress_line

    try:
        encoder = load_encoder(args.saved_model, args.checkpoint)
        source = load_source(
            args.dataset, args.split, args.data_dir, skip_bad_images=args.skip_bad_images
        )
    except (ConfigError, DataError) as error:
        return _fail(str(error))
    image_size = args.image_size or encoder.image_size or image_size_for(source)
    query = None
    if args.query:
        problem = check_image_file(args.query, decode=True)
        if problem:
            return _fail(f"--query={args.query}: {problem}.")
        query = prepare_file(args.query, image_size)
    try:
        embedded = embed_source(
            encoder,
            source,
            image_size,
            args.batch_size,
            projections=args.projections,
            progress=progress_line("embed", source.num_examples),
        )
    except DataError as error:
        return _fail(str(error))
    by_path = embedded.paths is not None
    ids = embedded.paths if by_path else embedded.index
    arrays = {"features": embedded.features, ("paths" if by_path else "index"): ids}
    if embedded.labels is not None:
        arrays["labels"] = embedded.labels
    if embedded.projections is not None:
        arrays["projections"] = embedded.projections

    result = {
        "model": encoder.where,
        "dataset": source.name,
        "split": source.split,
        "examples": len(embedded.features),
        "feature_dim": int(embedded.features.shape[1]),
        "image_size": image_size,
    }
    if query is not None:
        h = encoder(query[None])["final_avg_pool"][0]
        rows, similarity = most_similar(embedded.features, h, args.top_k)
        arrays["query"] = np.asarray(args.query)
        arrays["query_index"], arrays["query_similarity"] = rows, similarity
        result["query"] = args.query
        result["similar"] = [
            {"path" if by_path else "index": ids[r].item(), "similarity": float(s)}
            for r, s in zip(rows, similarity, strict=True)
        ]
        print(f"most similar to {args.query}:")
        for item in result["similar"]:
            where = item.get("path", item.get("index"))
            print(f"  {item['similarity']:.4f}  {where}")
    if args.out:
        np.savez(args.out, **arrays)
        result["out"] = args.out
        print(f"{'wrote':<10}{args.out}: {', '.join(f'{k} {v.shape}' for k, v in arrays.items())}")
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
