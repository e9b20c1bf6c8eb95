"""Which variables get weight decay and LARS's trust ratio: one rule, one object.

The paper's rule: kernels (conv and dense weights) are decayed; batch-norm
parameters and biases (the variables of rank < 2) get neither decay nor the
trust ratio. The supervised head is decayed through the loss and gets no trust
ratio, even with LARS (the authors' code keeps it out of LARS's update so a
linear head trains as plain SGD would). Who applies the decay is part of the
rule: LARS adds it to the gradient inside its update (`by_optimizer=True`);
with the other optimizers the model adds `rate * sum(||w||^2) / 2` to its loss.

    rule = WeightDecay.for_model(model, rate=1e-6, optimizer="lars")
    model.weight_decay_rule = rule
    model.compile(optimizer=build_optimizer("lars", schedule, weight_decay=rule))

This module imports nothing else from the package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Optimizers that apply weight decay inside their own update.
DECAY_IN_UPDATE = ("lars",)


def supervised_head_paths(model) -> frozenset[str]:
    """Paths of the variables of `model`'s supervised head (none without one): the
    variables decayed through the loss and never given the trust ratio."""
    head = getattr(model, "supervised_head", None)
    return frozenset(v.path for v in head.weights) if head is not None else frozenset()


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, path) for p in patterns)


@dataclass(frozen=True)
class WeightDecay:
    """The weight-decay rule of a run.

    Args:
        rate: the L2 coefficient.
        by_optimizer: the optimizer (LARS) applies the decay in its update; the
            model's loss then adds only the `loss_only` variables' term.
        loss_only: paths of variables decayed through the loss and never given
            the trust ratio (the supervised head's).
        exclude: regular expressions on variable paths, for code ported from the
            authors' LARS (`exclude_from_weight_decay`): when given, exactly the
            matching variables get no decay, instead of the rank rule.
        exclude_adaptation: the same for the trust ratio
            (`exclude_from_layer_adaptation`); None means `exclude`.
    """

    rate: float = 0.0
    by_optimizer: bool = False
    loss_only: frozenset[str] = frozenset()
    exclude: tuple[str, ...] | None = None
    exclude_adaptation: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError(f"weight decay rate={self.rate} must be >= 0.")

    @classmethod
    def for_model(cls, model, rate: float, optimizer: str) -> WeightDecay:
        """The rule for `model` (built) trained with the optimizer called `optimizer`."""
        return cls(rate, optimizer in DECAY_IN_UPDATE, supervised_head_paths(model))

    def _kept_by(self, variable, patterns: Sequence[str] | None) -> bool:
        if patterns is None:
            return len(variable.shape) >= 2
        return not _matches(variable.path, patterns)

    def decays(self, variable) -> bool:
        """Whether `variable` is decayed at all (by the optimizer or the loss)."""
        return self._kept_by(variable, self.exclude)

    def in_update(self, variable) -> bool:
        """Whether the optimizer decays `variable` inside its update."""
        return self.by_optimizer and self.decays(variable) and variable.path not in self.loss_only

    def trust_ratio(self, variable) -> bool:
        """Whether LARS scales `variable`'s update by the trust ratio."""
        patterns = self.exclude if self.exclude_adaptation is None else self.exclude_adaptation
        return self._kept_by(variable, patterns) and variable.path not in self.loss_only

    def loss_variables(self, variables: Iterable) -> list:
        """The variables whose L2 term the model adds to its loss."""
        if not self.rate:
            return []
        return [v for v in variables if self.decays(v) and not self.in_update(v)]

    def get_config(self) -> dict:
        return {
            "rate": self.rate,
            "by_optimizer": self.by_optimizer,
            "loss_only": sorted(self.loss_only),
            "exclude": None if self.exclude is None else list(self.exclude),
            "exclude_adaptation": (
                None if self.exclude_adaptation is None else list(self.exclude_adaptation)
            ),
        }

    @classmethod
    def from_config(cls, config: dict) -> WeightDecay:
        def patterns(value):
            return None if value is None else tuple(value)

        return cls(
            config["rate"],
            config["by_optimizer"],
            frozenset(config["loss_only"]),
            patterns(config["exclude"]),
            patterns(config["exclude_adaptation"]),
        )
