"""Weighted k-nearest-neighbour classification of features, the SSL literature's monitor.

Each query is compared by cosine similarity with every labelled bank feature;
its k most similar neighbours vote for their class with weight
exp(similarity / temperature) (Wu et al., 2018; k=200 and temperature 0.1 as in
most SSL code). Imports nothing of ours.
"""

from __future__ import annotations

import tensorflow as tf


def knn_classify(
    bank_features,
    bank_labels,
    query_features,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> tf.Tensor:
    """Class scores (num_queries, num_classes) of a weighted kNN vote.

    Args:
        bank_features: (N, d) features of labelled examples.
        bank_labels: (N,) integer labels.
        query_features: (M, d) features to classify.
        num_classes: number of classes.
        k: neighbours that vote (at most N).
        temperature: softness of the vote weights exp(sim / temperature).
        chunk: queries per similarity matrix (memory: chunk x N floats).

    Returns:
        (M, num_classes) float32 scores; `argmax` is the prediction.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"k={k} must be >= 1 and temperature={temperature} > 0.")
    bank = tf.math.l2_normalize(tf.cast(bank_features, tf.float32), axis=1)
    labels = tf.one_hot(tf.cast(bank_labels, tf.int32), num_classes)
    queries = tf.math.l2_normalize(tf.cast(query_features, tf.float32), axis=1)
    k = min(k, int(bank.shape[0]))
    scores = []
    for start in range(0, int(queries.shape[0]), chunk):
        sim = tf.matmul(queries[start : start + chunk], bank, transpose_b=True)
        top_sim, top_idx = tf.math.top_k(sim, k)
        weights = tf.exp(top_sim / temperature)
        votes = tf.gather(labels, top_idx)  # (chunk, k, classes)
        scores.append(tf.reduce_sum(votes * weights[..., None], axis=1))
    return tf.concat(scores, axis=0)


def knn_accuracy(
    bank_features,
    bank_labels,
    query_features,
    query_labels,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy of `knn_classify` on labelled queries."""
    scores = knn_classify(bank_features, bank_labels, query_features, num_classes, k, temperature)
    predicted = tf.argmax(scores, axis=1, output_type=tf.int32)
    correct = tf.equal(predicted, tf.cast(query_labels, tf.int32))
    return float(tf.reduce_mean(tf.cast(correct, tf.float32)))
