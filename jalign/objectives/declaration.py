"""What an objective declares it needs: its batch (`Requirements`) and, if online, its sampling.

Declarations are values on objective *instances* and compose: a sum of
objectives needs the union of its terms' requirements, a weighted term needs
what its inner objective needs, and a wrapper adds its own needs to its
inner's. Two engines read them: ``jalign.tabular`` (exact expectations or
samples) and the LLM trainer's provider (``jalign.train.provider``), which
refuses, before compiling, anything it cannot supply.
"""

from __future__ import annotations

import dataclasses

# The shape of the response axis a batch must have.
PAIR = "pair"  # G == 2, chosen first
SINGLE = "single"  # G == 1
TRIPLE = "triple"  # G == 3: (gold, chosen, rejected)
LIST = "list"  # G >= 2
ANY = "any"  # any G

_DESCRIPTIONS = {PAIR: "paired", SINGLE: "unpaired", TRIPLE: "triples", LIST: "listwise", ANY: "any G"}

# What a preference model outputs for a batch (``LogProbs.scores``).
REWARD = "reward"  # [B, G]: one scalar per (prompt, response)
PAIRWISE = "pairwise"  # [B, 2]: the logit of (A, B) and of (B, A), from prompt + A + B
EMBEDDING = "embedding"  # [B, G, K]: a K-dimensional preference embedding per (prompt, response)
MULTI_REWARD = "multi_reward"  # [B, G, K]: K attribute rewards per (prompt, response) (DPA)
SCORES = {REWARD: 2, PAIRWISE: 2, EMBEDDING: 3, MULTI_REWARD: 3}  # kind -> rank of LogProbs.scores


def _join_responses(a: str, b: str, where: str) -> str:
    """The response shape that satisfies both ``a`` and ``b``."""
    if a == b or b == ANY:
        return a
    if a == ANY:
        return b
    if LIST in (a, b) and {a, b} & {PAIR, TRIPLE}:
        return (set((a, b)) - {LIST}).pop()  # a pair (or triple) is a list with G >= 2
    raise ValueError(f"{where}: terms need incompatible batches: responses={a!r} and responses={b!r}")


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What an objective needs from its input batch.

    Attributes:
      responses: one of ``"pair"``, ``"single"``, ``"triple"``, ``"list"``, ``"any"``.
      reference: whether reference log-probs are needed.
      labels: label keys needed (see ``batch.py``).
      extras: per-token extras needed (see ``batch.py``).
      logprobs: whether the policy's per-token log-probs are needed (every
        policy objective; not preference-model losses).
      scores: the preference-model output needed (``"reward"``,
        ``"pairwise"``, ``"embedding"``, ``"multi_reward"``), or ``None``.
      residual: IFT's temporal residual connection: the policy's log-probs
        come from a forward whose response inputs mix ``residual`` (lambda)
        of the embedding of the model's own greedy prediction into each
        target token's; 0 (every other objective) is teacher forcing. A
        static number. One-token responses (the tabular engine's) have no
        response input to mix, so there it changes nothing.
    """

    responses: str = PAIR
    reference: bool = True
    labels: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    logprobs: bool = True
    scores: str | None = None
    residual: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.residual <= 1.0:
            raise ValueError(f"residual must be in [0, 1]; got {self.residual!r}")
        if self.responses not in _DESCRIPTIONS:
            raise ValueError(f"responses must be one of {sorted(_DESCRIPTIONS)}; got {self.responses!r}")
        if self.scores is not None and self.scores not in SCORES:
            raise ValueError(f"scores must be one of {sorted(SCORES)}; got {self.scores!r}")

    def union(self, other: "Requirements", where: str = "objective") -> "Requirements":
        """Everything either declaration needs; raises if their response shapes conflict."""
        if None not in (self.scores, other.scores) and self.scores != other.scores:
            raise ValueError(f"{where}: terms need different preference models: scores={self.scores!r} "
                             f"and scores={other.scores!r}")
        if self.residual and other.residual and self.residual != other.residual:
            raise ValueError(f"{where}: terms need different residual inputs: residual={self.residual!r} "
                             f"and residual={other.residual!r}; the policy's log-probs come from one forward")
        return Requirements(
            responses=_join_responses(self.responses, other.responses, where),
            reference=self.reference or other.reference,
            labels=tuple(sorted(set(self.labels) | set(other.labels))),
            extras=tuple(sorted(set(self.extras) | set(other.extras))),
            logprobs=self.logprobs or other.logprobs,
            scores=self.scores if self.scores is not None else other.scores,
            residual=self.residual or other.residual)

    def check(self, lp, name: str) -> None:
        """Raises ``ValueError`` naming the objective and the missing input of batch ``lp``."""
        if self.logprobs and (lp.policy is None or lp.policy.ndim != 3 or lp.mask is None
                              or lp.mask.shape != lp.policy.shape):
            raise ValueError(
                f"{name}: policy and mask must both be [B, G, T]; got "
                f"policy {None if lp.policy is None else lp.policy.shape}, "
                f"mask {None if lp.mask is None else lp.mask.shape}")
        if self.scores is not None:
            rank = SCORES[self.scores]
            if lp.scores is None or lp.scores.ndim != rank:
                shape = None if lp.scores is None else lp.scores.shape
                raise ValueError(f"{name}: needs {self.scores} scores of rank {rank}; batch has scores {shape}")
        g = lp.num_responses
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
        parts = [_DESCRIPTIONS[self.responses]]
        if self.scores is not None:
            parts.append(f"{self.scores} scores")
        if self.logprobs:
            parts.append("reference" if self.reference else "reference-free")
        parts += [f"labels[{k}]" for k in self.labels]
        parts += [f"extras[{k}]" for k in self.extras]
        if self.residual:
            parts.append(f"residual inputs (lambda={self.residual})")
        return ", ".join(parts)


# Sampling sources (strings, so declarations read plainly).
POLICY = "policy"  # the current policy, without gradient
REFERENCE = "reference"
MIXTURE = "mixture"  # the token-level geometric mixture pi^(1-b) ref^b
PREVIOUS = "previous"  # a frozen previous iterate pi_t
EXTRAPOLATED = "extrapolated"  # the policy after an extragradient half-step of the same objective
UNIFORM = "uniform"  # any full-support distribution (uniform in tabular)
DATA = "data"  # the dataset's own response to the prompt (SPIN's SFT target), not a model
SOURCES = (POLICY, REFERENCE, MIXTURE, PREVIOUS, EXTRAPOLATED, UNIFORM, DATA)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Where an online objective's responses and labels come from.

    Attributes:
      responses: the source of each response slot, e.g. ``("policy", "policy")``.
      labels: label keys the oracle provides (``"preference"``, ``"win_prob"``,
        ``"previous_logps"``).
      opponent: the source ``"win_prob"`` is measured against.
      reference: the source whose log-probs fill ``LogProbs.reference``
        (``"reference"``, or ``"previous"`` for SPPO's proximal target).
      mixture: the mixture coefficient ``b`` of a ``"mixture"`` source. On a
        declaration attached to a class this is the *name* of the
        hyperparameter holding it; an instance's ``sampling`` property
        resolves it to the value (``None`` when no source is a mixture).
      group: for objectives over a group of ``G`` responses per prompt (RLOO's
        ``k``, GRPO's group size): on a class, the *name* of the static
        hyperparameter holding ``G``, with ``responses[0]`` naming the group's
        source (further sources follow the group once: GRAO's reference
        answer); an instance's ``sampling`` resolves it to the count and
        repeats ``responses[0]`` that many times, so engines see the slots.
      candidates: for a rejection-sampled pair (RSO), the *name* of the static
        hyperparameter holding the number of candidates drawn per prompt from
        the response source before Algorithm 1 of Liu et al. keeps two; the
        instance resolves it to the count. ``None`` for every other objective.
      rejection: with ``candidates``, the *name* of the hyperparameter holding
        Algorithm 1's ``beta`` (acceptance ``exp((r - r_max) / beta)``); the
        instance resolves it to the value.
      reset: the probability that a prompt's generation is reset to a state
        of the dataset's response (DR-PO's dataset reset, Chang et al.
        2024): the prompt plus the first ``h`` tokens of its completion,
        ``h`` uniform in ``1 .. len - 1``; the responses are the
        continuations. 0: generation starts at the prompt.
    """

    responses: tuple[str, ...]
    labels: tuple[str, ...] = ()
    opponent: str | None = None
    reference: str = REFERENCE
    mixture: object = "mixture"
    group: object = None
    candidates: object = None
    rejection: object = None
    reset: float = 0.0

    def __post_init__(self):
        unknown = sorted(set(self.sources()) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown sampling source(s) {unknown}; valid: {SOURCES}")
        if "win_prob" in self.labels and self.opponent is None:
            raise ValueError("a 'win_prob' label needs an opponent source")

    def sources(self) -> tuple[str, ...]:
        """Every source the declaration uses."""
        return self.responses + ((self.opponent,) if self.opponent else ()) + (self.reference,)

    def model_sources(self) -> tuple[str, ...]:
        """The models that responses, win rates or the reference slot are drawn from or scored by.

        Each one needs generation (or scoring) in the loop: a fixed offline
        dataset cannot stand in for it.
        """
        drawn = self.responses + ((self.opponent,) if self.opponent else ())
        scored = () if self.reference == REFERENCE else (self.reference,)
        return tuple(dict.fromkeys(s for s in drawn + scored if s not in (UNIFORM, DATA)))

    def describe(self) -> str:
        if isinstance(self.group, int):
            rest = self.responses[self.group:]
            parts = [f"a group of {self.group} responses per prompt from {self.responses[0]}"
                     + "".join(f", and one from {source}" for source in rest)]
        else:
            parts = [f"responses from {' and '.join(self.responses)}"]
        if self.opponent:
            parts.append(f"win rates against {self.opponent}")
        if self.candidates is not None:
            parts.append(f"2 of {self.candidates} candidates kept by rejection sampling")
        if self.labels:
            parts.append("judge labels " + ", ".join(self.labels))
        if self.reference != REFERENCE:
            parts.append(f"reference slot = {self.reference}")
        if self.reset:
            parts.append(f"generation reset to a prefix of the dataset's response with probability {self.reset}")
        return "; ".join(parts)
