"""The CIFAR-10 study: does SimCLR pretraining learn, on this machine's budget?

One command regenerates everything (the defaults are the README's run):
  python tools/cifar_study.py --out=study

Three encoders, ResNet-18 with the CIFAR stem at half width (--width_multiplier 0.5:
a quarter of the FLOPs, so about 3 epochs fit the budget on 2 cores), each judged the
same way on the test sets (test_jpeg.npz, the full 10,000 images after JPEG q75, and
test.npz, its first 1,000 images exact):
  * SimCLR: pretrained for --minutes of training (wall clock, the kNN monitor's
    evaluations not counted; the cosine schedule is re-planned from the steps' measured
    time so that it ends with the budget) with the paper's CIFAR settings
    (colour strength 0.5, no blur, temperature 0.5, LARS), then a linear probe and
    weighted kNN (k=200, t=0.1) on its frozen features; a kNN monitor runs during
    pretraining;
  * random: the same encoder, randomly initialised, probed the same way;
  * supervised: the same encoder trained from scratch with labels (crop + flip) for
    the same --minutes; its own classifier's test accuracy (computed in float32).
Writes study.png (contrastive loss, contrastive accuracy and kNN top-1 against time),
study.md (the table), study.json and the SimCLR model's weights
(simclr.weights.h5) into --out. Every encoder is probed in float32, whatever
--mixed_precision it was trained in (see float32_encoder).
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
import tensorflow as tf  # noqa: E402

from simclr_tf2.build import build_model, compile_model, dtype_policy  # noqa: E402
from simclr_tf2.callbacks import KNNMonitor  # noqa: E402
from simclr_tf2.config import PRECISIONS, Config  # noqa: E402
from simclr_tf2.data.pipeline import build_dataset  # noqa: E402
from simclr_tf2.data.sources import load_source  # noqa: E402
from simclr_tf2.knn import knn_accuracy  # noqa: E402
from simclr_tf2.models.simclr import float32_copy  # noqa: E402
from simclr_tf2.optim import WarmUpAndCosineDecay  # noqa: E402
from simclr_tf2.precision import resolve_precision  # noqa: E402
from tools.hardware import cores, matmul_peak_gflops  # noqa: E402
from tools.linear_eval import top_k, train_linear  # noqa: E402

PRECISION_NAMES = {
    "none": "float32",
    "mixed_bfloat16": "mixed bfloat16",
    "mixed_float16": "mixed float16",
}
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


# `fit`'s steps, as a multiple of the planned ones: room for a re-planned schedule (`Budget`
# stops the training where the schedule or the budget ends).
FIT_ROOM = 4


class BudgetSchedule(WarmUpAndCosineDecay):
    """WarmUpAndCosineDecay whose total and warm-up steps `Budget` re-plans while
    training (variables): the budget is time, and a step's time is known only once
    training runs. The warm-up keeps its share of the total (`warmup_share`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.warmup_share = self.warmup_steps / self.total_steps
        self.total_steps = tf.Variable(float(self.total_steps), trainable=False)
        self.warmup_steps = tf.Variable(float(self.warmup_steps), trainable=False)

    def replan(self, step: int, total: int) -> None:
        """`total` steps in all; a warm-up not yet over at `step` is re-planned to its
        share of them (at least to `step`: one already due ends now)."""
        self.total_steps.assign(float(total))
        if step < self.warmup_steps.numpy():
            self.warmup_steps.assign(float(max(step, round(self.warmup_share * total))))

    def get_config(self):
        return {
            **super().get_config(),
            "total_steps": int(self.total_steps.numpy()),
            "warmup_steps": int(self.warmup_steps.numpy()),
        }


class Budget(keras.callbacks.Callback):
    """Stops `fit` after `seconds` of training; records per-step logs with their time.

    The time `excluded()` returns (the kNN monitor's evaluations so far) is not
    training and is not counted, so the budget buys the same training whether the
    monitor runs often or not at all.

    With a `BudgetSchedule`, the steps that fit the rest of the budget are re-planned
    `FIRST_STEPS` steps after the first (which traces), so that the warm-up too is
    planned on the run's own step time, and again when `REPLAN_AT` fractions of the
    budget have passed, from the steps' time since the last re-plan; `fit` also stops
    where the schedule ends: the learning rate decays to 0 as the budget runs out,
    whatever the first estimate of a step's time was (a throwaway model's steps were
    0.53 s on 2026-12-07 against 0.82 s in the run, which ended at 61% of its cosine
    schedule; 2.07 s in the next run, against 0.80 s, which left a warm-up of 2% of the
    steps). An infinite budget (--steps) is never re-planned: `fit` stops at the
    schedule's planned end, exactly.
    """

    FIRST_STEPS = 10
    REPLAN_AT = (0.05, 0.15, 0.3, 0.5, 0.7, 0.85)

    def __init__(
        self,
        seconds: float,
        keys=("contrast_loss", "contrast_acc"),
        excluded=None,
        schedule: BudgetSchedule | None = None,
        clock=time.time,
    ):
        super().__init__()
        self.seconds, self.keys = seconds, keys
        self.excluded = excluded or (lambda: 0.0)
        self.schedule, self.clock = schedule, clock
        self.rows: list[dict] = []
        self.replans: list[dict] = []

    def on_train_begin(self, logs=None):
        self.start = self.clock()
        self._since = None  # (step, seconds) the step time is measured from
        self._passed = 0  # REPLAN_AT fractions passed

    def on_train_batch_end(self, batch, logs=None):
        elapsed = self.clock() - self.start - self.excluded()
        step = int(self.model.optimizer.iterations.numpy())
        row = {"step": step, "seconds": elapsed}
        row.update({k: float(logs[k]) for k in self.keys if k in logs})
        self.rows.append(row)
        if self.schedule is not None:
            self._replan(step, elapsed)
            if step >= int(self.schedule.total_steps.numpy()):
                self.model.stop_training = True
        if elapsed > self.seconds:
            self.model.stop_training = True

    def _replan(self, step: int, elapsed: float) -> None:
        if self._since is None:  # measured from the first step's end: it traces
            self._since = (step, elapsed)
            return
        passed = sum(f * self.seconds <= elapsed for f in self.REPLAN_AT)
        if self.seconds == float("inf"):  # --steps: the planned schedule, never re-planned
            return
        first = not self.replans and step - self._since[0] >= self.FIRST_STEPS
        if not first and (passed <= self._passed or step == self._since[0]):
            return
        self._passed = passed
        step_s = (elapsed - self._since[1]) / (step - self._since[0])
        left = max(0.0, self.seconds - elapsed)
        total = max(step + 1, step + int(left / step_s))
        self.schedule.replan(step, total)
        warmup = int(self.schedule.warmup_steps.numpy())
        self.replans.append(
            {
                "step": step,
                "seconds": elapsed,
                "step_seconds": step_s,
                "total_steps": total,
                "warmup_steps": warmup,
            }
        )
        log(
            f"step {step}, {elapsed / 60:.1f} of {self.seconds / 60:.1f} min: "
            f"{step_s:.2f} s/step, schedule re-planned to {total} steps "
            f"({warmup} of warm-up)"
        )
        self._since = (step, elapsed)


class TimedKNNMonitor(KNNMonitor):
    """KNNMonitor that adds up the seconds its evaluations take (`seconds`)."""

    seconds = 0.0

    def on_train_batch_end(self, batch, logs=None):
        start = time.time()
        super().on_train_batch_end(batch, logs)
        self.seconds += time.time() - start


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def save(args, results) -> None:
    """Writes what is known so far, so a crash in a later phase loses nothing before it."""
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump(results, f, indent=1)


def features(encoder, source, batch_size=500):
    ds = build_dataset(source, batch_size, 32, mode="eval")
    embed = tf.function(lambda x: encoder(x, training=False)["final_avg_pool"])
    feats, labels = zip(*[(embed(x).numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(feats), np.concatenate(labels)


def probe(encoder, train, tests, epochs):
    """Linear probe (standardised features, SGD Nesterov, cosine) and kNN on every test set."""
    train_x, train_y = features(encoder, train)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    classifier = train_linear((train_x - mean) / std, train_y, 10, epochs, 256, 0.1, 0.0, 0)
    out = {}
    for name, source in tests.items():
        x, y = features(encoder, source)
        logits = classifier.predict((x - mean) / std, batch_size=1024, verbose=0)
        out[name] = {
            "linear_top1": top_k(logits, y, 1),
            "knn_top1": knn_accuracy(train_x, train_y, x, y, 10, k=200, temperature=0.1),
        }
    return out


def config_for(args, train_mode="pretrain") -> Config:
    return Config.from_flags(
        train_mode=train_mode,
        optimizer="lars" if train_mode == "pretrain" else "momentum",
        checkpoint="none" if train_mode == "finetune" else None,
        image_size=32,
        resnet_depth=18,
        width_multiplier=args.width_multiplier,
        train_batch_size=args.batch_size,
        temperature=0.5,
        color_jitter_strength=0.5,
        use_blur=False,
        weight_decay=1e-4 if train_mode == "pretrain" else 5e-4,
        lineareval_while_pretraining=False,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
    )


def float32_encoder(model):
    """`model`'s encoder in float32 (`float32_copy`), for the probes: bfloat16 features
    lose the small differences between images that a standardised linear probe reads
    (on 2026-12-06, probing the bfloat16 encoder directly cost the random encoder 6 and
    SimCLR's 8 points of top-1, kNN 1 point)."""
    return float32_copy(model).encoder


def built(config, num_classes):
    with dtype_policy(config.runtime.mixed_precision):
        return build_model(config, num_classes)


def plan(config, num_classes, data, budget, fixed_steps=0) -> tuple[float, int]:
    """(seconds per step, steps that fit the budget, or `fixed_steps` when > 0), timed on
    a throwaway model.

    The step time is the difference of a 12-step and a 4-step `fit` over 8 steps: each
    `fit` call also pays a fixed start (a new iterator, its shuffle buffer filled),
    which a single short fit counts as step time (5 steps timed alone gave 2.11 s per
    step for a step of 1.2 s, so the run ended at 26 of its 40 minutes).
    """
    model = built(config, num_classes)
    compile_for(model, config, 0.1, 100)
    model.fit(data, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # traces
    seconds = {}
    for n in (4, 12):
        start = time.time()
        model.fit(data, steps_per_epoch=n, epochs=1, verbose=0, shuffle=False)
        seconds[n] = time.time() - start
    step_s = max(seconds[12] - seconds[4], 1e-3) / 8
    return step_s, fixed_steps or max(10, int(budget / step_s))


def compile_for(model, config, learning_rate, steps) -> BudgetSchedule:
    batch = config.train.train_batch_size
    schedule = BudgetSchedule(learning_rate, batch, steps, max(1, steps // 20))
    compile_model(model, config, schedule)
    return schedule


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes",
        type=float,
        default=40.0,
        help="budget of each training, in minutes of training (the kNN monitor's "
        "evaluations are not counted)",
    )
    parser.add_argument("--out", default="study")
    parser.add_argument("--width_multiplier", type=float, default=0.5)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--probe_epochs", type=int, default=100)
    parser.add_argument("--knn_every_minutes", type=float, default=5.0)
    parser.add_argument("--train_examples", type=int, default=0, help="0 = all 50,000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mixed_precision",
        default="auto",
        choices=PRECISIONS,
        help="as run.py; auto = bfloat16 where the CPU computes it natively, else float32",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="train exactly this many steps (the budget is then not a limit; to compare "
        "precisions at equal steps); 0 = as many as --minutes allows",
    )
    parser.add_argument(
        "--supervised",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the supervised baseline for the same budget (--no-supervised: "
        "SimCLR and the random encoder only, to compare pretraining settings)",
    )
    parser.add_argument(
        "--random",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also probe the randomly initialised encoder (--no-random: SimCLR only; the "
        "random encoder of a --seed is the same in every precision)",
    )
    args = parser.parse_args(argv)
    if args.steps:
        args.minutes = float("inf")
    if not os.path.exists(os.path.join(DATA, "cifar10", "train.npz")):
        sys.stderr.write(f"cifar_study.py: no {DATA}/cifar10/train.npz (see its README).\n")
        return 2
    os.makedirs(args.out, exist_ok=True)
    cifar = os.path.join(DATA, "cifar10")
    split = f"train[:{args.train_examples}]" if args.train_examples else "train"
    train = load_source(os.path.join(cifar, "train.npz"), split)
    tests = {
        "test_jpeg (10,000, JPEG q75)": load_source(os.path.join(cifar, "test_jpeg.npz")),
        "test (1,000, exact)": load_source(os.path.join(cifar, "test.npz")),
    }
    budget = args.minutes * 60
    peak = matmul_peak_gflops()
    precision, why = resolve_precision(args.mixed_precision)
    log(f"precision: {precision} ({why})")
    results = {
        "machine": {"cores": cores(), "matmul_peak_gflops": round(peak, 1)},
        "mixed_precision": precision,
    }
    knn_bank = build_dataset(train, 500, 32, "eval", every=max(1, train.num_examples // 10_000))
    knn_queries = build_dataset(tests["test (1,000, exact)"], 500, 32, "eval")

    # 1. SimCLR pretraining with a kNN monitor, then the probes.
    config = config_for(args)
    data = build_dataset(
        train,
        args.batch_size,
        32,
        "pretrain",
        color_jitter_strength=0.5,
        use_blur=False,
        seed=args.seed,
    )
    step_s, steps = plan(config, None, data, budget, args.steps)
    log(f"SimCLR pretraining: {step_s:.2f} s/step, planning {steps} steps in {args.minutes} min")
    keras.utils.set_random_seed(args.seed)
    model = built(config, None)
    random_encoder = built(config, None)
    schedule = compile_for(model, config, 1.0, steps)
    monitor = TimedKNNMonitor(
        knn_bank, knn_queries, 10, max(1, int(args.knn_every_minutes * 60 / step_s)), k=200
    )
    timer = Budget(budget, excluded=lambda: monitor.seconds, schedule=schedule)
    started = time.time()
    model.fit(
        data,
        steps_per_epoch=FIT_ROOM * steps,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[timer, monitor],
    )
    minutes = round((time.time() - started) / 60, 1)
    log(f"pretraining done: {int(model.optimizer.iterations.numpy())} steps; kNN {monitor.history}")
    results["curves"] = {
        "pretraining": timer.rows,
        "knn": monitor.history,
        "step_seconds": step_s,
        "replans": timer.replans,
    }
    model.save_weights(os.path.join(args.out, "simclr.weights.h5"))
    results["simclr"] = probe(float32_encoder(model), train, tests, args.probe_epochs)
    results["simclr"]["steps"] = int(model.optimizer.iterations.numpy())
    results["simclr"]["minutes"] = minutes
    results["simclr"]["training_minutes"] = round(timer.rows[-1]["seconds"] / 60, 1)
    log(f"SimCLR probes: {results['simclr']}")
    if args.random:
        results["random"] = probe(float32_encoder(random_encoder), train, tests, args.probe_epochs)
        log(f"random-init probes: {results['random']}")
    save(args, results)
    if args.supervised:
        supervised_baseline(args, train, tests, budget, results)
    write_outputs(args, results)
    return 0


def supervised_baseline(args, train, tests, budget, results) -> None:
    """The same encoder trained from scratch with labels for the same budget."""
    sup_config = config_for(args, "finetune")
    sup_data = build_dataset(train, args.batch_size, 32, "finetune", seed=args.seed)
    sup_step_s, sup_steps = plan(sup_config, 10, sup_data, budget, args.steps)
    log(f"supervised: {sup_step_s:.2f} s/step, planning {sup_steps} steps in {args.minutes} min")
    keras.utils.set_random_seed(args.seed)
    supervised = built(sup_config, 10)
    schedule = compile_for(supervised, sup_config, 0.1, sup_steps)
    sup_timer = Budget(budget, keys=("supervised_loss", "supervised_acc"), schedule=schedule)
    supervised.fit(
        sup_data,
        steps_per_epoch=FIT_ROOM * sup_steps,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[sup_timer],
    )
    results["supervised"] = {"steps": int(supervised.optimizer.iterations.numpy())}
    # Judged in float32 like the probed encoders (and like run.py's evaluation).
    evaluated = float32_copy(supervised)
    evaluated.compile()
    for name, source in tests.items():
        metrics = evaluated.evaluate(
            build_dataset(source, 500, 32, "eval"), verbose=0, return_dict=True
        )
        results["supervised"][name] = {"top1": float(metrics["supervised_acc"])}

    log(f"supervised: {results['supervised']}")


def write_outputs(args, results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["curves"]["pretraining"]
    minutes = [r["seconds"] / 60 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(minutes, [r["contrast_loss"] for r in rows])
    axes[0].set(title="contrastive loss (running mean)", xlabel="minutes of training")
    axes[1].plot(minutes, [r["contrast_acc"] for r in rows])
    axes[1].set(title="contrastive accuracy (running mean)", xlabel="minutes of training")
    at = {r["step"]: r["seconds"] / 60 for r in rows}
    knn = [(at[s], a) for s, a in results["curves"]["knn"] if s in at]
    axes[2].plot([m for m, _ in knn], [a for _, a in knn], marker="o")
    axes[2].set(title="kNN top-1 on test (1,000 exact)", xlabel="minutes of training")
    fig.suptitle(
        f"SimCLR, ResNet-18 x{args.width_multiplier} (CIFAR stem), batch {args.batch_size}, "
        f"{results['simclr']['steps']} steps in {results['simclr']['training_minutes']} min, "
        f"{PRECISION_NAMES[results['mixed_precision']]}"
    )
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "study.png"), dpi=80)

    lines = [
        "| encoder | test set | linear probe top-1 | kNN top-1 | supervised top-1 |",
        "|---|---|---|---|---|",
    ]
    for name in results["simclr"]:
        if not isinstance(results["simclr"][name], dict):
            continue
        s = results["simclr"][name]
        lines.append(f"| SimCLR | {name} | {s['linear_top1']:.3f} | {s['knn_top1']:.3f} | |")
        if "random" in results:
            r = results["random"][name]
            lines.append(
                f"| random init | {name} | {r['linear_top1']:.3f} | {r['knn_top1']:.3f} | |"
            )
        if "supervised" in results:
            sup = results["supervised"][name]["top1"]
            lines.append(f"| supervised | {name} | | | {sup:.3f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "study.md"), "w") as f:
        f.write(table + "\n")
    save(args, results)
    print(table)
    keys = ("machine", "mixed_precision", "simclr", "random", "supervised")
    summary = {k: results[k] for k in keys if k in results}
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
