"""SimCLR's contrastive loss, NT-Xent, over projections from all replicas.

This module imports nothing else from the package.
"""

from __future__ import annotations

import tensorflow as tf

# Subtracted from the self-similarity logits so that exp() of them is 0.
LARGE_NUM = 1e9


def _gather_from_all_replicas(tensor: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Concatenates `tensor` from every replica along axis 0.

    Returns the global tensor and the offset of this replica's rows in it.
    Outside a strategy (or with one replica) the tensor is returned as is.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor, tf.constant(0, tf.int32)
    # all_gather has a gradient: each replica receives the sum over replicas of
    # the gradients flowing into its own rows, which is what makes the per-replica
    # losses add up to the loss of the global batch.
    gathered = context.all_gather(tensor, axis=0)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    return gathered, replica_id * tf.shape(tensor)[0]


def nt_xent(
    hidden: tf.Tensor, temperature: float, hidden_norm: bool = True
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Normalised temperature-scaled cross-entropy (SimCLR, Chen et al. 2020).

    Each of this replica's n pairs is an anchor twice (view 1 against all
    views, view 2 against all views); the candidates are the projections of
    both views of the whole global batch N, gathered from every replica, minus
    the anchor itself: one positive and 2N - 2 negatives.

    The value is, per local pair, the cross-entropy with view 1 as anchor plus
    the cross-entropy with view 2 as anchor, averaged over the local pairs (the
    convention of the paper's released code, so its learning rates and weight
    decay carry over). An untrained model starts near 2 * ln(2N - 1).

    Args:
        hidden: (2n, d) projections of this replica, view 1 stacked over view 2.
        temperature: the softmax temperature tau.
        hidden_norm: L2-normalise the projections (cosine similarity).

    Returns:
        (loss, logits_ab, labels): the scalar loss; the (n, N) logits of view-1
        anchors against the view-2 candidates of the global batch; and the
        (n, 2N) one-hot targets of the view-1 anchors, whose argmax over the
        first N columns is the positive's index in `logits_ab`.
    """
    hidden = tf.convert_to_tensor(hidden)
    # Logits and loss stay in (at least) float32 whatever the compute precision.
    if hidden.dtype in (tf.float16, tf.bfloat16):
        hidden = tf.cast(hidden, tf.float32)
    if hidden_norm:
        hidden = tf.math.l2_normalize(hidden, axis=-1)
    hidden1, hidden2 = tf.split(hidden, 2, axis=0)
    local_n = tf.shape(hidden1)[0]

    hidden1_all, offset = _gather_from_all_replicas(hidden1)
    hidden2_all, _ = _gather_from_all_replicas(hidden2)
    global_n = tf.shape(hidden1_all)[0]

    positive_idx = tf.range(local_n) + offset
    labels = tf.one_hot(positive_idx, global_n * 2, dtype=hidden.dtype)
    self_mask = tf.one_hot(positive_idx, global_n, dtype=hidden.dtype)

    inv_t = tf.cast(1.0 / temperature, hidden.dtype)
    logits_aa = tf.matmul(hidden1, hidden1_all, transpose_b=True) * inv_t - self_mask * LARGE_NUM
    logits_bb = tf.matmul(hidden2, hidden2_all, transpose_b=True) * inv_t - self_mask * LARGE_NUM
    logits_ab = tf.matmul(hidden1, hidden2_all, transpose_b=True) * inv_t
    logits_ba = tf.matmul(hidden2, hidden1_all, transpose_b=True) * inv_t

    loss_a = tf.nn.softmax_cross_entropy_with_logits(
        labels, tf.concat([logits_ab, logits_aa], axis=1)
    )
    loss_b = tf.nn.softmax_cross_entropy_with_logits(
        labels, tf.concat([logits_ba, logits_bb], axis=1)
    )
    loss = tf.reduce_mean(loss_a + loss_b)
    return loss, logits_ab, labels


def distillation_loss(
    student_logits: tf.Tensor, teacher_logits: tf.Tensor, temperature: float
) -> tf.Tensor:
    """SimCLRv2's distillation loss: cross-entropy to the teacher's softened labels.

    `mean over the batch of -sum_y softmax(teacher / T)_y * log softmax(student / T)_y`
    (Chen et al., 2020b, eq. 3), with no gradient into the teacher. Its minimum
    over the student is the teacher's entropy at T, reached when the student's
    distribution equals the teacher's.

    Args:
        student_logits: (n, classes).
        teacher_logits: (n, classes).
        temperature: T > 0; higher softens both distributions.
    """
    student = tf.convert_to_tensor(student_logits)
    if student.dtype in (tf.float16, tf.bfloat16):
        student = tf.cast(student, tf.float32)
    teacher = tf.stop_gradient(tf.cast(teacher_logits, student.dtype))
    inv_t = tf.cast(1.0 / temperature, student.dtype)
    targets = tf.nn.softmax(teacher * inv_t, axis=-1)
    return tf.reduce_mean(
        tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=student * inv_t)
    )
