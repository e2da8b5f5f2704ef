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
from jalign.objectives.declaration import (  # noqa: F401  (re-exported: family modules import them here)
    ANY, LIST, MIXTURE, PAIR, SINGLE, TRIPLE, Requirements, Sampling,
)

Metrics = dict[str, Array]


def static_field(default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field that is program structure, not a traced hyperparameter."""
    return dataclasses.field(default=default, metadata={"static": True}, **kwargs)


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
    """Base class of all objectives. Subclasses implement :meth:`compute`; a loss of
    the pair's log-ratio margin subclasses :class:`~jalign.objectives.margin.MarginObjective`
    and implements only ``margin_loss``.

    Declarations live on the instance and compose (``jalign.objectives.declaration``):

    - ``requires``: what the batch must hold;
    - ``sampling``: for online objectives, where responses and labels come
      from (``None`` for offline ones);
    - ``strength_path``: the dotted path of the hyperparameter that sets the
      regularisation strength (whatever the paper calls it: DPO's ``beta``,
      IPO's ``tau``), relative to the objective; ``strength`` is its value.

    A registered objective declares them once, in ``@objective(...)``; sums,
    weights and wrappers derive theirs from their parts.
    """

    name: ClassVar[str] = "objective"
    citation: ClassVar[str] = ""
    declared_requires: ClassVar[Requirements] = Requirements(responses=ANY, reference=False)
    declared_sampling: ClassVar[Sampling | None] = None
    strength_field: ClassVar[str | None] = None

    @property
    def requires(self) -> Requirements:
        """What this objective, with these hyperparameters, needs from its batch."""
        return self.declared_requires

    @property
    def sampling(self) -> Sampling | None:
        """Where responses and labels come from, with a mixture coefficient resolved to its value."""
        declared = self.declared_sampling
        if declared is None:
            return None
        mixing = MIXTURE in declared.sources()
        resolved = dataclasses.replace(declared, mixture=getattr(self, declared.mixture) if mixing else None)
        return _resolve_counts(resolved, self)

    @property
    def strength_path(self) -> str | None:
        """Dotted path of the regularisation-strength hyperparameter, or ``None``."""
        return self.strength_field

    @property
    def strength(self) -> Any:
        """The regularisation strength's value, or ``None`` when the objective has none."""
        return None if self.strength_field is None else getattr(self, self.strength_field)

    def named_terms(self) -> tuple[tuple[str, "Objective"], ...]:
        """``((name, term), ...)``: the terms of a sum, numbered when names repeat; else ``self``."""
        return ((self.name, self),)

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


def _resolve_counts(declared: Sampling, objective: Objective) -> Sampling:
    """A declaration's group size and candidate count, read from the objective's static fields.

    A group of ``G`` repeats the first declared response source ``G`` times
    (the other sources follow once), so every engine that counts
    ``responses`` sees the group.
    """
    changes = {}
    if isinstance(declared.group, str):
        group = int(getattr(objective, declared.group))
        changes.update(group=group, responses=declared.responses[:1] * group + declared.responses[1:])
    if isinstance(declared.candidates, str):
        changes["candidates"] = int(getattr(objective, declared.candidates))
    if isinstance(declared.rejection, str):
        changes["rejection"] = getattr(objective, declared.rejection)
    return dataclasses.replace(declared, **changes) if changes else declared


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


class Wrapper(Objective):
    """Base of objectives around an ``inner`` one: the strength is the inner's, addressed as ``inner.<path>``."""

    @property
    def strength_path(self) -> str | None:
        inner = self.inner.strength_path
        return None if inner is None else f"inner.{inner}"

    @property
    def strength(self) -> Any:
        return self.inner.strength


@register_pytree
class Scaled(Objective):
    """``weight * inner``: scales the loss; declarations and metrics are the inner objective's."""

    weight: Any = 1.0
    inner: Objective = None

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def requires(self) -> Requirements:
        return self.inner.requires

    @property
    def sampling(self) -> Sampling | None:
        return self.inner.sampling

    @property
    def strength_path(self) -> str | None:
        return self.inner.strength_path

    @property
    def strength(self) -> Any:
        return self.inner.strength

    def per_example(self, lp: LogProbs) -> tuple[Array, Metrics]:
        losses, metrics = self.inner.per_example(lp)
        return self.weight * losses, metrics


def _numbered(names: list[str]) -> list[str]:
    """``["dpo", "sft", "dpo"]`` -> ``["dpo", "sft", "dpo_1"]``."""
    out, seen = [], {}
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


def _same_sampling(a: Sampling, b: Sampling) -> bool:
    """Equal declarations; mixture coefficients are compared when concrete (traced ones may differ)."""
    if dataclasses.replace(a, mixture=None) != dataclasses.replace(b, mixture=None):
        return False
    try:
        return bool(a.mixture == b.mixture)
    except jax.errors.ConcretizationTypeError:
        return True


@register_pytree
class Sum(Objective):
    """The sum of several objectives; metrics are namespaced ``"{term}/{metric}"``.

    Each term also reports ``"{term}/loss"``, its (weighted) contribution.
    Terms with the same name are numbered: ``dpo``, ``dpo_1``. The sum needs
    the union of its terms' requirements; at most one sampling declaration
    may occur among its terms (every term sees the same sampled batch).
    """

    terms: tuple = ()

    @property
    def name(self) -> str:
        return "+".join(term.name for term in self.terms)

    def named_terms(self) -> tuple[tuple[str, Objective], ...]:
        return tuple(zip(_numbered([term.name for term in self.terms]), self.terms))

    @property
    def requires(self) -> Requirements:
        needs = Requirements(responses=ANY, reference=False, logprobs=False)
        for term in self.terms:
            needs = needs.union(term.requires, where=self.name)
        return needs

    @property
    def sampling(self) -> Sampling | None:
        declared = [(n, t.sampling) for n, t in self.named_terms() if t.sampling is not None]
        for name, sampling in declared[1:]:
            if not _same_sampling(sampling, declared[0][1]):
                raise ValueError(f"{self.name}: terms {declared[0][0]!r} and {name!r} declare different "
                                 "sampling; a sum samples its batch one way")
        return declared[0][1] if declared else None

    def _strength_term(self) -> tuple[str, Objective] | None:
        with_strength = [(n, t) for n, t in self.named_terms() if t.strength_path is not None]
        return with_strength[0] if len(with_strength) == 1 else None

    @property
    def strength_path(self) -> str | None:
        """``"{term}.{path}"`` when exactly one term has a strength; otherwise ``None`` (ambiguous)."""
        found = self._strength_term()
        return None if found is None else f"{found[0]}.{found[1].strength_path}"

    @property
    def strength(self) -> Any:
        found = self._strength_term()
        return None if found is None else found[1].strength

    def per_example(self, lp: LogProbs) -> tuple[Array, Metrics]:
        total, metrics = 0.0, {}
        for prefix, term in self.named_terms():
            losses, term_metrics = term.per_example(lp)
            total = total + losses
            metrics[f"{prefix}/loss"] = losses
            metrics.update({f"{prefix}/{key}": value for key, value in term_metrics.items()})
        return total, metrics
