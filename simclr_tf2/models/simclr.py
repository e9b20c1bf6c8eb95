"""SimCLRModel: encoder, projection head and supervised head, trained by `fit`.

`train_step` and `test_step` work under any `tf.distribute` strategy: every
replica contrasts its pairs against the projections gathered from all replicas
(`losses.nt_xent`), batch norm can be synchronised (`BatchNormSpec`), and the
per-replica loss is divided by the number of replicas because the optimizer
sums the replicas' gradients.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from simclr_tf2.config import TRAIN_MODES
from simclr_tf2.losses import distillation_loss, nt_xent
from simclr_tf2.models.heads import ProjectionHead, num_head_outputs, supervised_head
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.optim.weight_decay import WeightDecay, supervised_head_paths


class _Untracked:
    """Holds the teacher out of Keras's and tf.train.Checkpoint's tracking: its
    weights are neither the student's variables nor saved in its checkpoints."""

    def __init__(self, fn):
        self.fn = fn


def _serialize(part: keras.layers.Layer) -> dict:
    """A part's serialized config, without its build config: deserialized, it is
    built by the model, so its variables keep the model's paths."""
    config = keras.saving.serialize_keras_object(part)
    config.pop("build_config", None)
    return config


def _deserialize(part: keras.layers.Layer | dict) -> keras.layers.Layer:
    return keras.saving.deserialize_keras_object(part) if isinstance(part, dict) else part


def _l2_loss(variable) -> tf.Tensor:
    # tf.nn.l2_loss: sum(x ** 2) / 2, the paper code's weight-decay term.
    return 0.5 * tf.reduce_sum(tf.square(variable))


def _for_keras_reduction(logs: dict) -> dict:
    """Logs in the shape Keras can reduce over replicas under any strategy.

    Keras averages the step's logs over replicas; under a multi-worker
    strategy it does so along axis 0, which a scalar lacks. Our logs are
    already global means (the same on every replica), so giving them one axis
    there changes nothing but makes the reduction work.
    """
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {key: tf.reshape(value, [1]) for key, value in logs.items()}


@keras.saving.register_keras_serializable(package="simclr_tf2")
class SimCLRModel(keras.Model):
    """SimCLR for pretraining (contrastive) and fine-tuning (supervised).

    Inputs to `fit` / `evaluate` are `(x, labels)` or `x` alone, with integer
    labels. In pretraining, x holds two views of each image: a (B, H, W, 6)
    tensor (view 1 in channels 0-2, view 2 in 3-5) or a tuple of two
    (B, H, W, 3) tensors; they are stacked on the batch axis. In fine-tuning,
    and for evaluation, x is (B, H, W, 3). Pixels are floats in [0, 1].

    In distillation (SimCLRv2's third step), x is (B, H, W, 3) and a teacher
    (`set_teacher`) labels it: the loss is the cross-entropy from the student's
    supervised head to the teacher's distribution at `distill_temperature`,
    plus `distill_label_weight` times the supervised loss when that weight is
    positive (labels needed then; otherwise labels are ignored in training).

    The network comes in parts, each with its own arguments; its batch norms
    follow the parts' `BatchNormSpec`:

        spec = BatchNormSpec(synchronized=False)
        model = SimCLRModel(
            ResNet(18, 0.5, cifar_stem=True, batch_norm=spec),
            ProjectionHead("nonlinear", 128, 3, batch_norm=spec),
            num_classes=10,
        )

    `simclr_tf2.build.build_model` builds them from a `Config`. Give the parts
    unbuilt: the model builds them, so their variables' paths start with its
    name (`simclr_model/resnet/...`), as the export expects.

    Args:
        encoder: the `ResNet` (or its serialized config); h is its
            `final_avg_pool`.
        projection_head: the `ProjectionHead` g (or its serialized config);
            None: the default nonlinear 3-layer head to 128 with the
            encoder's `BatchNormSpec`.
        num_classes: classes of the supervised head; None for no head.
        train_mode: "pretrain", "finetune" or "distill".
        ft_proj_selector: which head output feeds the supervised head when
            fine-tuning (0 = h, i = the i-th head layer).
        temperature: NT-Xent temperature.
        hidden_norm: L2-normalise projections in the loss.
        lineareval_while_pretraining: train the supervised head on
            `stop_gradient(h)` while pretraining (labels repeated for both views).
        fine_tune_after_block: in fine-tuning, freeze the network up to and
            including this stage: -1 trains everything, 0 freezes the stem,
            1-3 the stem and block groups up to that one, 4 the whole encoder.
            Frozen stages also keep their batch-norm statistics (inference mode).
        weight_decay: the L2 coefficient, or a `WeightDecay` rule. The model
            adds `rate * sum(||w||^2) / 2` to its loss for the variables the
            rule leaves to the loss: every kernel, never batch norm or biases.
            Compiled with an optimizer that decays in its own update (LARS),
            the model takes that optimizer's rule instead: LARS decays every
            kernel but the supervised head's, which the loss decays (the
            paper's code). Kept as `weight_decay_rule`.
        zero_init_logits_layer: start the supervised head at zero.
        distill_temperature: T of the distillation loss.
        distill_label_weight: weight of the supervised loss on labels when distilling.
    """

    def __init__(
        self,
        encoder: ResNet | dict,
        projection_head: ProjectionHead | dict | None = None,
        num_classes: int | None = None,
        train_mode: str = "pretrain",
        ft_proj_selector: int = 0,
        temperature: float = 0.1,
        hidden_norm: bool = True,
        lineareval_while_pretraining: bool = True,
        fine_tune_after_block: int = -1,
        weight_decay: float | WeightDecay = 0.0,
        zero_init_logits_layer: bool = False,
        distill_temperature: float = 1.0,
        distill_label_weight: float = 0.0,
        **kwargs,
    ):
        kwargs.setdefault("name", "simclr_model")
        super().__init__(**kwargs)
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode={train_mode!r} is not one of {TRAIN_MODES}.")
        if train_mode != "pretrain" and not num_classes:
            raise ValueError(f"train_mode={train_mode!r} needs num_classes (a supervised head).")
        if distill_temperature <= 0:
            raise ValueError(f"distill_temperature={distill_temperature} must be positive.")
        if distill_label_weight < 0:
            raise ValueError(f"distill_label_weight={distill_label_weight} must be >= 0.")
        if not -1 <= fine_tune_after_block <= 4:
            raise ValueError(f"fine_tune_after_block={fine_tune_after_block} must be in [-1, 4].")
        if train_mode == "pretrain" and fine_tune_after_block != -1:
            raise ValueError(
                f"fine_tune_after_block={fine_tune_after_block} only applies to "
                "train_mode='finetune'; use -1 when pretraining."
            )
        encoder = _deserialize(encoder)
        if projection_head is None:
            head = ProjectionHead(batch_norm=encoder.batch_norm)
        else:
            head = _deserialize(projection_head)
        max_selector = num_head_outputs(head.proj_head_mode, head.num_proj_layers)
        if not 0 <= ft_proj_selector <= max_selector:
            raise ValueError(
                f"ft_proj_selector={ft_proj_selector} must be in [0, {max_selector}] for "
                f"proj_head_mode={head.proj_head_mode!r} with "
                f"num_proj_layers={head.num_proj_layers}."
            )
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be positive.")
        if isinstance(weight_decay, dict):  # from get_config
            weight_decay = WeightDecay.from_config(weight_decay)
        if not isinstance(weight_decay, WeightDecay):
            if weight_decay < 0:
                raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
            weight_decay = WeightDecay(weight_decay)

        self.num_classes = num_classes
        self.train_mode = train_mode
        self.ft_proj_selector = ft_proj_selector
        self.temperature = temperature
        self.hidden_norm = hidden_norm
        self.lineareval_while_pretraining = lineareval_while_pretraining
        self.fine_tune_after_block = fine_tune_after_block
        self.weight_decay_rule = weight_decay
        self.zero_init_logits_layer = zero_init_logits_layer
        self.distill_temperature = distill_temperature
        self.distill_label_weight = distill_label_weight
        self._teacher = _Untracked(None)

        self.encoder = encoder
        self.projection_head = head
        self.supervised_head = None
        if num_classes and (train_mode != "pretrain" or lineareval_while_pretraining):
            self.supervised_head = supervised_head(num_classes, zero_init_logits_layer)
        if train_mode != "pretrain":
            for stage in self.encoder.stages[: fine_tune_after_block + 1]:
                for layer in stage:
                    layer.trainable = False

        # Every tracker is a Mean of values already averaged over all replicas
        # (see _update_metrics), so any replica's logs are the global ones.
        mean = keras.metrics.Mean
        self.contrast_loss_tracker = mean(name="contrast_loss")
        self.contrast_acc_tracker = mean(name="contrast_acc")
        self.contrast_entropy_tracker = mean(name="contrast_entropy")
        self.supervised_loss_tracker = mean(name="supervised_loss")
        self.supervised_acc_tracker = mean(name="supervised_acc")
        self.supervised_top5_tracker = mean(name="supervised_top5_acc")
        self.weight_decay_tracker = mean(name="weight_decay")
        self.total_loss_tracker = mean(name="total_loss")
        self.distill_loss_tracker = mean(name="distill_loss")
        self.teacher_agreement_tracker = mean(name="teacher_agreement")

    @property
    def metrics(self):
        return [
            self.contrast_loss_tracker,
            self.contrast_acc_tracker,
            self.contrast_entropy_tracker,
            self.supervised_loss_tracker,
            self.supervised_acc_tracker,
            self.supervised_top5_tracker,
            self.weight_decay_tracker,
            self.total_loss_tracker,
            self.distill_loss_tracker,
            self.teacher_agreement_tracker,
        ]

    def set_teacher(self, teacher) -> None:
        """The teacher of `train_mode='distill'`: a callable from images (B, H, W, 3)
        to logits (B, num_classes), e.g. a fine-tuned SimCLRModel's
        `lambda x: model(x)["logits_sup"]`. Not part of the student's weights."""
        self._teacher = _Untracked(teacher)

    @property
    def teacher(self):
        return self._teacher.fn

    # ----------------------------------------------------------------- forward

    @staticmethod
    def stack_views(x) -> tf.Tensor:
        """(B,H,W,6) or (view1, view2) -> (2B,H,W,3); (B,H,W,3) is returned as is."""
        if isinstance(x, (tuple, list)):
            return tf.concat(list(x), axis=0)
        channels = x.shape[-1]
        if channels == 3:
            return x
        if channels != 6:
            raise ValueError(
                f"SimCLRModel expects images with 3 channels, or two views with 6; got {channels}."
            )
        return tf.concat(tf.split(x, 2, axis=-1), axis=0)

    def build(self, input_shape):
        """Creates every variable for images of `input_shape` (channels ignored).

        `input_shape` may also be a pair of view shapes.
        """
        if isinstance(input_shape, (tuple, list)) and isinstance(input_shape[0], (tuple, list)):
            input_shape = input_shape[0]
        height, width = tuple(input_shape)[1:3]
        self.call(keras.KerasTensor((None, height, width, 3)))
        self.built = True
        self._share_weight_decay_rule()

    def compile(self, optimizer="rmsprop", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self._share_weight_decay_rule()

    def _share_weight_decay_rule(self) -> None:
        """With an optimizer that decays weights in its update (LARS, whose
        `decay_rule` says so), the model and the optimizer follow one rule: the
        optimizer's, with the supervised head left to the model's loss term and
        out of the trust ratio (the paper's code). Runs when the model is both
        built and compiled, before the optimizer builds its per-variable lists."""
        optimizer = getattr(self, "optimizer", None)
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        rule = getattr(inner, "decay_rule", None)
        if not self.built or rule is None or not rule.by_optimizer:
            return
        loss_only = rule.loss_only | supervised_head_paths(self)
        shared = dataclasses.replace(rule, loss_only=loss_only)
        inner.decay_rule = self.weight_decay_rule = shared

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras's fit/evaluate pull a first batch to build an unbuilt model, and
        # under a strategy reduce it across replicas first, which fails under
        # MultiWorkerMirroredStrategy (and costs a batch of augmentation). A built
        # model with a built optimizer has nothing to build.
        optimizer_built = self.optimizer is None or self.optimizer.built
        if self.built and optimizer_built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def call(self, inputs, training=False):
        """Returns the named outputs of the network on `inputs`.

        The dict has the encoder's block outputs and `final_avg_pool` (h),
        `proj_head_output` (z), the output of each head layer i as
        `proj_head_layer_<i>` (the last one is z) and, with a supervised head,
        `logits_sup`. Two
        views are stacked on the batch axis first (view 1 rows, then view 2).
        """
        images = self.stack_views(inputs)
        outputs = dict(self.encoder(images, training=training))
        h = outputs["final_avg_pool"]
        z, hiddens = self.projection_head(h, training=training)
        outputs["proj_head_output"] = z
        for i, hidden in enumerate(hiddens[1:], start=1):
            outputs[f"proj_head_layer_{i}"] = hidden
        if self.supervised_head is not None:
            if self.train_mode == "pretrain":
                # Linear evaluation while pretraining must not shape the encoder.
                sup_input = keras.ops.stop_gradient(h)
            else:
                sup_input = hiddens[self.ft_proj_selector]
            outputs["logits_sup"] = self.supervised_head(sup_input)
        return outputs

    # ------------------------------------------------------------------ losses

    @property
    def loss_dtype(self) -> tf.DType:
        """Losses and logits are float32 (float64 for a float64 model)."""
        return tf.float64 if self.compute_dtype == "float64" else tf.float32

    def weight_decay_loss(self) -> tf.Tensor:
        """The L2 term the model adds to the loss (see the class docstring)."""
        zero = tf.constant(0.0, self.loss_dtype)
        rule = self.weight_decay_rule
        variables = rule.loss_variables(self.trainable_variables)
        if not variables:
            return zero
        l2 = tf.add_n([tf.cast(_l2_loss(v), self.loss_dtype) for v in variables])
        return rule.rate * l2

    def _contrastive_terms(self, outputs) -> tuple[tf.Tensor, dict]:
        loss, logits_ab, labels = nt_xent(
            outputs["proj_head_output"], self.temperature, self.hidden_norm
        )
        prob = tf.nn.softmax(logits_ab)
        entropy = -tf.reduce_mean(tf.reduce_sum(prob * tf.math.log(prob + 1e-8), axis=-1))
        correct = tf.equal(tf.argmax(labels, axis=1), tf.argmax(logits_ab, axis=1))
        acc = tf.reduce_mean(tf.cast(correct, loss.dtype))
        return loss, {"contrast_acc": acc, "contrast_entropy": entropy}

    def compute_losses(self, x, y=None, training: bool = False) -> dict:
        """All loss terms of one step on this replica's batch.

        Returns a dict with `total_loss` and the terms that apply:
        `contrast_loss` (+ `contrast_acc`, `contrast_entropy`) for two-view
        inputs, `distill_loss` (+ `teacher_agreement`, the fraction of images
        whose top class is the teacher's) when distilling, `supervised_loss`
        and `logits_sup`/`sup_labels` when labels and a supervised head are
        there, `weight_decay`, and `batch_size` (the images through the
        encoder, for averaging over replicas).
        """
        two_views = isinstance(x, (tuple, list)) or x.shape[-1] == 6
        outputs = self(x, training=training)
        terms = {}
        total = tf.constant(0.0, self.loss_dtype)
        if two_views and self.train_mode == "pretrain":
            loss, stats = self._contrastive_terms(outputs)
            terms.update(contrast_loss=loss, **stats)
            total += loss
        if self.train_mode == "distill" and self.teacher is not None:
            student = tf.cast(outputs["logits_sup"], self.loss_dtype)
            teacher = tf.cast(self.teacher(self.stack_views(x)), self.loss_dtype)
            loss = distillation_loss(student, teacher, self.distill_temperature)
            agree = tf.equal(tf.argmax(student, axis=1), tf.argmax(teacher, axis=1))
            terms.update(
                distill_loss=loss, teacher_agreement=tf.reduce_mean(tf.cast(agree, loss.dtype))
            )
            total += loss
        if y is not None and self.supervised_head is not None:
            logits = tf.cast(outputs["logits_sup"], self.loss_dtype)
            labels = tf.cast(y, tf.int32)
            if two_views:
                labels = tf.concat([labels, labels], axis=0)
            sup_loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
            terms.update(supervised_loss=sup_loss, logits_sup=logits, sup_labels=labels)
            weight = self.distill_label_weight if self.train_mode == "distill" else 1.0
            if weight:
                total += weight * sup_loss
        wd = self.weight_decay_loss()
        terms["weight_decay"] = wd
        terms["total_loss"] = total + wd
        terms["batch_size"] = tf.shape(outputs["final_avg_pool"])[0]
        return terms

    # ------------------------------------------------------------------- steps

    def _update_metrics(self, terms: dict, top5: bool = False) -> dict:
        """Updates the trackers with this step's terms averaged over all replicas.

        One all-reduce of a small vector: each replica's sums (term x its
        batch size, correct predictions) and counts, so that the logs are the
        global means whatever the strategy, even for uneven last eval batches.
        """
        trackers = {
            "contrast_loss": self.contrast_loss_tracker,
            "contrast_acc": self.contrast_acc_tracker,
            "contrast_entropy": self.contrast_entropy_tracker,
            "supervised_loss": self.supervised_loss_tracker,
            "weight_decay": self.weight_decay_tracker,
            "total_loss": self.total_loss_tracker,
            "distill_loss": self.distill_loss_tracker,
            "teacher_agreement": self.teacher_agreement_tracker,
        }
        keys = [key for key in trackers if key in terms]
        size = tf.cast(terms["batch_size"], tf.float32)
        sums = [tf.cast(terms[key], tf.float32) * size for key in keys] + [size]
        accuracy = []
        if "logits_sup" in terms:
            labels = terms["sup_labels"]
            logits = tf.cast(terms["logits_sup"], tf.float32)
            accuracy = [(self.supervised_acc_tracker, 1)]
            if top5:
                accuracy.append((self.supervised_top5_tracker, min(5, logits.shape[-1])))
            for _, k in accuracy:
                hits = tf.math.in_top_k(labels, logits, k)
                sums.append(tf.reduce_sum(tf.cast(hits, tf.float32)))
            sums.append(tf.cast(tf.shape(labels)[0], tf.float32))
        context = tf.distribute.get_replica_context()
        total = tf.unstack(context.all_reduce("SUM", tf.stack(sums)))
        logs = {}
        for i, key in enumerate(keys):
            trackers[key].update_state(total[i] / total[len(keys)], sample_weight=total[len(keys)])
            logs[key] = trackers[key].result()
        if accuracy:
            count = total[-1]
            for j, (tracker, _) in enumerate(accuracy):
                tracker.update_state(total[len(keys) + 1 + j] / count, sample_weight=count)
                logs[tracker.name] = tracker.result()
        return logs

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if self.train_mode == "distill":
            if self.teacher is None:
                raise ValueError("train_mode='distill' needs a teacher: call set_teacher() first.")
            if not self.distill_label_weight:
                y = None  # the teacher's labels only; the data may be unlabelled
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms = self.compute_losses(x, y, training=True)
            # The optimizer sums gradients over replicas.
            loss = terms["total_loss"] / replicas
            # Loss scaling for mixed_float16 (a no-op otherwise); apply_gradients unscales.
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        learning_rate = self.optimizer.learning_rate
        # Layers off the loss path (e.g. head layers above ft_proj_selector
        # when fine-tuning) have no gradient.
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        )
        logs = self._update_metrics(terms)
        logs["learning_rate"] = learning_rate
        return _for_keras_reduction(logs)

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        terms = self.compute_losses(x, y, training=False)
        return _for_keras_reduction(self._update_metrics(terms, top5=True))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "encoder": _serialize(self.encoder),
                "projection_head": _serialize(self.projection_head),
                "train_mode": self.train_mode,
                "ft_proj_selector": self.ft_proj_selector,
                "temperature": self.temperature,
                "hidden_norm": self.hidden_norm,
                "lineareval_while_pretraining": self.lineareval_while_pretraining,
                "fine_tune_after_block": self.fine_tune_after_block,
                "weight_decay": self.weight_decay_rule.get_config(),
                "zero_init_logits_layer": self.zero_init_logits_layer,
                "distill_temperature": self.distill_temperature,
                "distill_label_weight": self.distill_label_weight,
            }
        )
        return config


def float32_copy(model: SimCLRModel, synchronized: bool | None = None) -> SimCLRModel:
    """A built copy of `model` that computes in float32, holding `model`'s weights.

    Under a mixed-precision policy a model keeps float32 weights but computes in
    bfloat16 (or float16). What reads a trained model rather than trains it
    (evaluation, export) uses this copy: bfloat16 features keep 8 bits of mantissa,
    and on 2026-12-06 a standardised linear probe of bfloat16 features of the same
    encoder scored 6 to 8 points of top-1 below the float32 features'.

    Args:
        model: a built SimCLRModel, in any precision.
        synchronized: whether the copy's batch norms synchronise across replicas
            (None: as `model`'s). An export for one device uses False.

    Returns:
        The copy (built for any image size), its variables at `model`'s values,
        with `model`'s teacher; uncompiled. Make it in the strategy scope it is to
        run in.
    """

    def part(layer):  # the part's config, computing in float32
        config = {**layer.get_config(), "dtype": "float32"}
        if synchronized is not None:
            spec = dataclasses.replace(layer.batch_norm, synchronized=synchronized)
            config["batch_norm"] = spec
        return type(layer).from_config(config)

    previous = keras.config.dtype_policy()
    # The parts' layers are made in their constructors, under the global policy.
    keras.config.set_dtype_policy("float32")
    try:
        copy = SimCLRModel.from_config(
            {
                **model.get_config(),
                "dtype": "float32",
                "encoder": part(model.encoder),
                "projection_head": part(model.projection_head),
            }
        )
        copy.build((None, None, None, 3))  # the weights do not depend on the image size
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_teacher(model.teacher)
    copy_weights(model, copy)
    return copy


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Assigns each of `target`'s variables the value of `source`'s variable of the
    same path (a copy made by `float32_copy`, kept up to date with a training model).
    By path, not by position: the order of batch-norm variables may differ."""
    values = {v.path: v for v in source.variables}
    for variable in target.variables:
        variable.assign(values[variable.path].numpy())
