"""Objectives as values: the base class, requirements, and composition.

An objective is a frozen dataclass holding its hyperparameters. It is a pytree
whose hyperparameters are leaves, so it can be passed through ``jit`` without
recompiling for new values, and ``vmap``ped over a grid of them. Because
hyperparameters may be tracers, objective code never branches on them in
Python; configuration that changes the program (a divergence's name, a flag)
is declared with :func:`static_field` and is part of the treedef instead.

Calling an objective on a :class:`~jalign.objectives.batch.LogProbs` returns
``(loss, metrics)``: the batch-mean loss and a flat dict of scalars.
``per_example`` returns the unreduced ``[B]`` losses and metrics, which is what
wrappers and composition work with.

Composition is arithmetic: ``dpo(beta=0.1) + 0.2 * sft()`` is a :class:`Sum` of
a :class:`Scaled` term; metrics of each term are namespaced by its name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs

Metrics = dict[str, Array]

# What a batch must hold for an objective: the shape of the response axis.
PAIR = "pair"  # G == 2, chosen first
SINGLE = "single"  # G == 1
TRIPLE = "triple"  # G == 3: (gold, chosen, rejected)
LIST = "list"  # G >= 2
ANY = "any"  # any G


def static_field(default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field that is program structure, not a traced hyperparameter."""
    return dataclasses.field(default=default, metadata={"static": True}, **kwargs)


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What an objective needs from its input batch.

    Attributes:
      responses: one of ``"pair"``, ``"single"``, ``"triple"``, ``"list"``, ``"any"``.
      reference: whether reference log-probs are needed.
      labels: label keys needed (see ``batch.py``).
      extras: per-token extras needed (see ``batch.py``).
    """

    responses: str = PAIR
    reference: bool = True
    labels: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()

    def check(self, lp: LogProbs, name: str) -> None:
        """Raises ``ValueError`` naming the objective and the missing input."""
        g = lp.policy.shape[1] if lp.policy.ndim == 3 else None
        if lp.policy.ndim != 3 or lp.mask.shape != lp.policy.shape:
            raise ValueError(
                f"{name}: policy and mask must both be [B, G, T]; got "
                f"{lp.policy.shape=} {lp.mask.shape=}")
        wrong_g = {PAIR: g != 2, SINGLE: g != 1, TRIPLE: g != 3, LIST: g < 2}.get(self.responses, False)
        if wrong_g:
            raise ValueError(f"{name}: needs responses={self.responses!r}; batch has G={g}")
        if self.reference and lp.reference is None:
            raise ValueError(f"{name}: needs reference log-probs; batch has reference=None")
        if self.reference and lp.reference.shape != lp.policy.shape:
            raise ValueError(f"{name}: reference shape {lp.reference.shape} != policy {lp.policy.shape}")
        for key in self.labels:
            if key not in lp.labels:
                raise ValueError(f"{name}: needs labels[{key!r}]; batch has labels {sorted(lp.labels)}")
        for key in self.extras:
            if key not in lp.extras:
                raise ValueError(f"{name}: needs extras[{key!r}]; batch has extras {sorted(lp.extras)}")

    def describe(self) -> str:
        parts = [{PAIR: "paired", SINGLE: "unpaired", TRIPLE: "triples", LIST: "listwise", ANY: "any G"}[self.responses]]
        parts.append("reference" if self.reference else "reference-free")
        parts += [f"labels[{k}]" for k in self.labels]
        parts += [f"extras[{k}]" for k in self.extras]
        return ", ".join(parts)


def batch_mean(values: Array, weights: Array | None = None) -> Array:
    """Float32 mean of ``[B]`` values (scalars pass through), optionally weighted."""
    values = jnp.asarray(values, jnp.float32)
    if values.ndim == 0:
        return values
    if weights is None:
        return jnp.mean(values)
    weights = jnp.asarray(weights, jnp.float32)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


class Objective:
    """Base class of all objectives. Subclasses implement :meth:`compute`."""

    name: ClassVar[str] = "objective"
    citation: ClassVar[str] = ""
    requires: ClassVar[Requirements] = Requirements(responses=ANY, reference=False)

    def compute(self, lp: LogProbs) -> tuple[Array, Metrics]:
        """Per-example losses ``[B]`` and metrics (each ``[B]`` or scalar)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")

    def per_example(self, lp: LogProbs) -> tuple[Array, Metrics]:
        """Checks the batch against :attr:`requires`, then :meth:`compute`."""
        self.requires.check(lp, self.name)
        return self.compute(lp)

    def __call__(self, lp: LogProbs) -> tuple[Array, Metrics]:
        """Batch-mean loss (weighted by ``labels["example_weight"]`` if given) and metrics."""
        losses, metrics = self.per_example(lp)
        weights = lp.labels.get("example_weight")
        loss = batch_mean(losses, weights)
        reduced = {key: batch_mean(value, weights) for key, value in metrics.items()}
        return loss, {"loss": loss, **reduced}

    def __add__(self, other: "Objective") -> "Sum":
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum(_terms(self) + _terms(other))

    def __mul__(self, weight) -> "Scaled":
        if isinstance(weight, Objective):
            return NotImplemented
        return Scaled(weight=weight, inner=self)

    __rmul__ = __mul__


def _terms(objective: Objective) -> tuple[Objective, ...]:
    return objective.terms if isinstance(objective, Sum) else (objective,)


def register_pytree(cls: type) -> type:
    """Makes ``cls`` a frozen dataclass whose non-static fields are pytree leaves."""
    cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
    fields = dataclasses.fields(cls)
    jax.tree_util.register_dataclass(
        cls,
        data_fields=[f.name for f in fields if not f.metadata.get("static")],
        meta_fields=[f.name for f in fields if f.metadata.get("static")],
    )
    return cls


def hyperparameters(objective: Objective) -> Mapping[str, Any]:
    """The dataclass fields of an objective, by name."""
    return {f.name: getattr(objective, f.name) for f in dataclasses.fields(objective)}


@register_pytree
class Scaled(Objective):
    """``weight * inner``: scales the loss, keeps the inner objective's metrics."""

    weight: Any = 1.0
    inner: Objective = None

    @property
    def name(self) -> str:
        return self.inner.name

    def per_example(self, lp: LogProbs) -> tuple[Array, Metrics]:
        losses, metrics = self.inner.per_example(lp)
        return self.weight * losses, metrics


@register_pytree
class Sum(Objective):
    """The sum of several objectives; metrics are namespaced ``"{term}/{metric}"``.

    Each term also reports ``"{term}/loss"``, its (weighted) contribution.
    Terms with the same name are numbered: ``dpo``, ``dpo_1``.
    """

    terms: tuple = ()

    @property
    def name(self) -> str:
        return "+".join(term.name for term in self.terms)

    def per_example(self, lp: LogProbs) -> tuple[Array, Metrics]:
        total, metrics, seen = 0.0, {}, {}
        for term in self.terms:
            count = seen.get(term.name, 0)
            seen[term.name] = count + 1
            prefix = term.name if count == 0 else f"{term.name}_{count}"
            losses, term_metrics = term.per_example(lp)
            total = total + losses
            metrics[f"{prefix}/loss"] = losses
            metrics.update({f"{prefix}/{key}": value for key, value in term_metrics.items()})
        return total, metrics
