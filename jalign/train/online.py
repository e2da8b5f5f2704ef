"""The online loop's rollout: prompts -> generation -> judge -> the objective's batch.

An online objective declares where its responses come from
(:class:`~jalign.objectives.declaration.Sampling`); every step, for a global
batch of ``B`` prompts, :class:`Rollout`:

1. refreshes the frozen previous iterate every ``online.iteration_steps``
   steps, when the declaration uses it (SPPO, INPO);
2. draws each response slot from its declared source, with the KV-cache
   sampler inside one jit on the mesh (``jalign.models.sampling``): the
   policy, the reference, the token-level geometric mixture
   ``pi^(1-b) ref^b`` (``b`` the objective's ``mixture``) or the previous
   iterate. A ``"uniform"`` slot (Nash-MD's and EGPO's full-support ``mu``)
   is served by the policy's own samples: for a fixed opponent any
   full-support ``mu`` has the same minimiser, ``pi ∝ ref exp(P(. ≻ opp)/beta)``,
   since the regression is solved exactly there, pair by pair. A ``"data"``
   slot (SPIN's SFT target) is the prompt record's own ``completion``, cut
   to ``online.max_new_tokens``; nothing is generated for it. Under a
   dataset reset (``Sampling.reset``, DR-PO) each prompt is first extended by
   a prefix of its record's completion (:mod:`jalign.train.dataset_responses`)
   and every draw continues from there;
3. decodes them and asks the judge: ``P(y_0 ≻ y_1)`` for ``"preference"``,
   and for ``"win_prob"`` each response against ``online.win_samples`` (K)
   opponents drawn per prompt from the declared opponent source, averaged
   (SPPO's estimate of ``P(y ≻ pi_t)``). EGPO's opponent is the policy after a
   half-step: the half-step's batch is labelled against the current
   policy's opponents, then the real step's against the half-step policy's;
   ``"reward"`` is the judge's scalar reward of every response
   (``judge.reward``; a preference-only judge is refused when the loop is
   built). A group declaration (RLOO's ``k``, GRPO's group size) draws that
   many responses per prompt from its source; a ``candidates`` declaration
   (RSO) draws that many, rewards them, and keeps two per prompt by
   Algorithm 1 of Liu et al. (``jalign.train.rejection_sampling``), the
   higher reward first;
4. returns the objective's batch (the collated layout of
   :class:`jalign.data.collate.Collator`), with the judge's labels.

Every key derives from the train state's RNG (checkpointed), so a resumed run
draws the same responses. Every process draws the same global prompts, judges
every row (judges are host code) and feeds its share of the rows.

Stop tokens are kept in the response and trained on, as the EOS of offline
responses is. What the judge reads is the decoded response without the stop
token and without special tokens.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.data.collate import bucket_lengths
from jalign.data.prompts import PromptData, prompt_batches, read_prompts
from jalign.models import load_hf
from jalign.models.sampling import Generation, SamplingConfig, sample
from jalign.models.scoring import encode_responses, token_logprobs
from jalign.models.tokenizer import load_tokenizer
from jalign.objectives.declaration import DATA, EXTRAPOLATED, MIXTURE, POLICY, PREVIOUS, REFERENCE, UNIFORM
from jalign.sharding import activate
from jalign.train.dataset_responses import (
    completion_responses, extended_prompts, judged_texts, prefix_lengths, samples_dataset,
)
from jalign.train.hosts import device_batch, gathered, process_rows
from jalign.train.judges import Judge, ModelJudge, gives_rewards
from jalign.train.rejection_sampling import rejection_sample
from jalign.train.provider import Plan
from jalign.train.step import FrozenModels, TrainState, make_half_step, reference_decoder

SERVED = {UNIFORM: POLICY}  # the source that serves a declared one, where they differ

# Salts folded into the step's key, one per draw, so no two draws share randomness.
_SLOT_SALT, _OPPONENT_SALT, _HALF_OPPONENT_SALT, _MEASURE_SALT, _RESET_SALT = 1, 101, 102, 201, 301
_REJECTION_SALT = 401  # the host's uniform draws of RSO's Algorithm 1


class OnlineConfigError(ValueError):
    """The online section cannot be served (a user error, raised before compiling)."""


def resolve_judge(judge: Any, *, mesh=None, rules=None) -> Judge:
    """The judge an ``online.judge`` value names: a judge, or a local preference-model checkpoint directory."""
    if judge is None:
        raise OnlineConfigError("online.judge is not set: give a jalign.train.judges.FunctionJudge over a Python "
                                "function of texts, a ModelJudge, or a local preference-model checkpoint directory")
    if isinstance(judge, str):
        return ModelJudge(load_hf(judge, mesh=mesh, rules=rules), load_tokenizer(judge))
    if not callable(getattr(judge, "preference", None)):
        raise OnlineConfigError(f"online.judge must have preference(prompts, a, b) (a Judge) or be a checkpoint "
                                f"directory; got {type(judge).__name__}. Wrap a plain function in "
                                "jalign.train.judges.FunctionJudge(fn, kind='reward' or 'preference')")
    return judge


def require_reward_judge(judge: Judge, sampling, name: str) -> None:
    """Refuses, before anything compiles, a ``"reward"`` label with a judge that has no scalar reward."""
    if "reward" in sampling.labels and not gives_rewards(judge):
        raise OnlineConfigError(f"{name}: needs labels['reward'], a scalar reward per response, but online.judge "
                                f"({type(judge).__name__}) only compares responses; give a reward judge "
                                "(FunctionJudge(fn, kind='reward') or a reward-head model)")


def stop_token_ids(tokenizer: Any, stop_tokens: Sequence[str] | None) -> np.ndarray:
    """int32 ``[S]`` ids that end a response (``[-1]``: none)."""
    if stop_tokens is None:
        if tokenizer.eos_token_id is None:
            raise OnlineConfigError("online.stop_tokens is None (the tokenizer's EOS), but the tokenizer has no "
                                    "EOS; name the stop tokens or set online.stop_tokens=() for fixed lengths")
        return np.asarray([tokenizer.eos_token_id], np.int32)
    ids = []
    for text in stop_tokens:
        encoded = tokenizer.convert_tokens_to_ids(text)
        if encoded is None or encoded == tokenizer.unk_token_id:
            raise OnlineConfigError(f"online.stop_tokens: {text!r} is not a token of the tokenizer")
        ids.append(encoded)
    return np.asarray(ids or [-1], np.int32)


@dataclasses.dataclass(frozen=True)
class Drawn:
    """Responses drawn for a global batch, on the host: tokens/mask ``[B, C, N]``, texts ``[B][C]``."""

    tokens: np.ndarray
    mask: np.ndarray
    texts: list[list[str]]
    stopped: np.ndarray  # bool [B, C]: the response ended with a stop token


def _slot_groups(slots: Sequence[str]) -> dict[str, list[int]]:
    """Served source -> the response slots it fills, in slot order."""
    groups: dict[str, list[int]] = {}
    for g, source in enumerate(slots):
        groups.setdefault(SERVED.get(source, source), []).append(g)
    return groups


def _in_slot_order(drawn: dict[str, Drawn], groups: dict[str, list[int]]) -> Drawn:
    """The responses of every slot ``[B, G, ...]``, gathered from the draws of their sources."""
    where = sorted((g, source, copy) for source, slots in groups.items() for copy, g in enumerate(slots))

    def stack(field: str) -> np.ndarray:
        return np.stack([getattr(drawn[source], field)[:, copy] for _, source, copy in where], 1)

    rows = len(next(iter(drawn.values())).texts)
    texts = [[drawn[source].texts[i][copy] for _, source, copy in where] for i in range(rows)]
    return Drawn(stack("tokens"), stack("mask"), texts, stack("stopped"))


class Rollout:
    """One step's responses and labels for an online objective (see the module docstring).

    Args:
      plan: the provider's online plan (``plan.sampling`` set).
      exp: the experiment (its ``online`` and ``train`` sections).
      graphdef: the policy's graphdef; ``FrozenModels.rest`` completes it.
      tokenizer: the policy's tokenizer.
      tx: the optimizer (EGPO's half-step).
      mesh, rules: where generation runs and how activations are sharded.
    """

    def __init__(self, plan: Plan, exp, graphdef, tokenizer, tx, mesh, rules):
        online = exp.online
        self.plan, self.sampling, self.tokenizer, self.mesh = plan, plan.sampling, tokenizer, mesh
        self.prompts: PromptData = read_prompts(online.prompts, tokenizer, max_prompt_length=online.max_prompt_length,
                                                on_error=online.on_error,
                                                completions=samples_dataset(self.sampling))
        self.batch_size = exp.train.batch_size
        self.iterator = iter(prompt_batches(self.prompts, batch_size=self.batch_size, seed=exp.train.seed,
                                            shuffle=exp.data.shuffle))
        # Measurement prompts: batch n at step n, apart from the training stream (no state to checkpoint).
        self._measure_prompts = prompt_batches(self.prompts, batch_size=self.batch_size, seed=exp.train.seed + 1)
        self.judge = resolve_judge(online.judge, mesh=mesh, rules=rules)
        require_reward_judge(self.judge, self.sampling, exp.objective.name)
        self.win_samples = online.win_samples
        self.iteration_steps = online.iteration_steps or math.ceil(len(self.prompts.prompts) / self.batch_size)
        self.stops = stop_token_ids(tokenizer, online.stop_tokens)
        pad = self.prompts.pad_id
        self._max_new_tokens = online.max_new_tokens
        cfg = SamplingConfig(max_new_tokens=online.max_new_tokens, temperature=online.temperature,
                             top_k=online.top_k, top_p=online.top_p, pad_token=pad)
        self._draw = jax.jit(_draw_fn(graphdef, plan, cfg, self.stops, mesh, rules),
                             static_argnames=("source", "copies", "salt"))
        self._score = jax.jit(_score_fn(graphdef, plan, exp.train.logprob_impl, mesh, rules))
        self._refresh = jax.jit(lambda state: dataclasses.replace(state, previous=jax.tree.map(jnp.copy, state.params)),
                                donate_argnums=0)
        self._half = None
        if self.sampling.opponent == EXTRAPOLATED:
            half = make_half_step(graphdef, tx, plan, impl=exp.train.logprob_impl)

            def half_under_rules(*args):
                with activate(mesh, rules):
                    return half(*args)
            self._half = jax.jit(half_under_rules)
        self._prefixes = None  # this step's roll-in prefixes under a dataset reset (DR-PO), else None
        self._reset_buckets = bucket_lengths(self.prompts.max_prompt_length + max(
            (len(p.completion) for p in self.prompts.prompts if p.completion is not None), default=0))
        self._times = {"generate": 0.0, "judge": 0.0, "update": 0.0}
        self._generated = {"tokens": 0, "responses": 0, "stopped": 0}
        self._timed_tokens = 0  # tokens generated since the times were last cleared (for tokens/s)

    # --- drawing and judging ---------------------------------------------------------------------------

    def _mixture(self, objective) -> jax.Array:
        b = objective.sampling.mixture
        return jnp.asarray(0.0 if b is None else b, jnp.float32)

    def draw(self, state: TrainState, frozen: FrozenModels, prompts: dict, objective, source: str, copies: int,
             salt: int, params=None) -> Drawn:
        """``copies`` responses per prompt from a served ``source`` (``params``: the policy's, by default)."""
        gen: Generation = self._draw(state.params if params is None else params, state.previous, frozen,
                                     prompts["prompt_tokens"], prompts["prompt_mask"], state.rng,
                                     self._mixture(objective), source=source, copies=copies, salt=salt)
        tokens, mask = (np.asarray(x) for x in gathered((gen.tokens, gen.mask)))
        b = tokens.shape[0] // copies
        tokens, mask = tokens.reshape(b, copies, -1), mask.reshape(b, copies, -1).astype(bool)
        lengths = mask.sum(-1)
        last = np.take_along_axis(tokens, np.maximum(lengths - 1, 0)[..., None], -1)[..., 0]
        stopped = (lengths > 0) & np.isin(last, self.stops)
        if self._prefixes is not None:  # a dataset reset: the judge reads the roll-in and the continuation
            texts = judged_texts(tokens, mask, stopped, self._prefixes, self._decode)
        else:
            texts = [[self._decode(tokens[i, c, :lengths[i, c] - int(stopped[i, c])]) for c in range(copies)]
                     for i in range(b)]
        self._generated["tokens"] += int(lengths.sum())
        self._timed_tokens += int(lengths.sum())
        self._generated["responses"] += lengths.size
        self._generated["stopped"] += int(stopped.sum())
        return Drawn(tokens, mask, texts, stopped)

    def dataset_responses(self, prompts: dict, copies: int) -> Drawn:
        """Each prompt record's own completion, ``copies`` times, cut to ``online.max_new_tokens`` (its start kept)."""
        return Drawn(*completion_responses(self.prompts, prompts["record_index"], copies, self._max_new_tokens,
                                           self.stops, self._decode))

    def reset(self, state: TrainState, prompts: dict) -> tuple[dict, list[np.ndarray]]:
        """The prompts extended by roll-in prefixes of their completions, and the prefixes (DR-PO's reset).

        The roll-in lengths derive from the train state's RNG, so a resumed run draws the same ones.
        """
        key = np.asarray(gathered(jax.random.key_data(jax.random.fold_in(state.rng, _RESET_SALT)))).ravel()
        completions = [self.prompts.completion(int(i)) for i in prompts["record_index"]]
        lengths = prefix_lengths([len(c) for c in completions], self.sampling.reset,
                                 np.random.default_rng(key.tolist()))
        prefixes = [c[:h] for c, h in zip(completions, lengths)]
        return extended_prompts(prompts, prefixes, self.prompts.pad_id, self._reset_buckets), prefixes

    def _decode(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

    def _prompt_texts(self, prompts: dict) -> list:
        return [self.prompts.text(int(i)) for i in prompts["record_index"]]

    def _win_probs(self, texts: list, responses: Drawn, opponents: Drawn) -> np.ndarray:
        """float32 ``[B, G]``: each response's mean judged win probability against its prompt's K opponents."""
        b, g, k = len(texts), responses.tokens.shape[1], opponents.tokens.shape[1]
        prompts = [texts[i] for i in range(b) for _ in range(g) for _ in range(k)]
        ours = [responses.texts[i][j] for i in range(b) for j in range(g) for _ in range(k)]
        theirs = [opponents.texts[i][m] for i in range(b) for _ in range(g) for m in range(k)]
        return self._judged(prompts, ours, theirs).reshape(b, g, k).mean(-1).astype(np.float32)

    def _judged(self, prompts: list, a: list, b: list) -> np.ndarray:
        started = time.perf_counter()
        p = np.asarray(self.judge.preference(prompts, a, b), np.float64)
        self._times["judge"] += time.perf_counter() - started
        if p.shape != (len(a),) or not np.all(np.isfinite(p) & (p >= 0) & (p <= 1)):
            raise ValueError(f"the judge must return {len(a)} probabilities in [0, 1]; got shape {p.shape}, "
                             f"range [{np.nanmin(p)}, {np.nanmax(p)}]")
        return p

    def _rewards(self, texts: list, responses: Drawn) -> np.ndarray:
        """float32 ``[B, G]``: the judge's scalar reward of every response."""
        b, g = responses.tokens.shape[:2]
        started = time.perf_counter()
        r = np.asarray(self.judge.reward([texts[i] for i in range(b) for _ in range(g)],
                                         [responses.texts[i][j] for i in range(b) for j in range(g)]), np.float64)
        self._times["judge"] += time.perf_counter() - started
        if r.shape != (b * g,) or not np.all(np.isfinite(r)):
            raise ValueError(f"the judge's reward must be {b * g} finite numbers; got shape {r.shape}")
        return r.reshape(b, g).astype(np.float32)

    def _rejection_pairs(self, state: TrainState, texts: list, candidates: Drawn, beta: float) -> Drawn:
        """Two of each prompt's candidates, kept by RSO's Algorithm 1 and ordered by reward (winner first)."""
        rewards = self._rewards(texts, candidates)
        key = jax.random.fold_in(state.rng, _REJECTION_SALT)
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max)))
        picks = []
        for row in rewards:
            pair = rejection_sample(row, 2, beta, rng)
            picks.append(sorted(pair, key=lambda i: -row[i]))
        picks = np.asarray(picks)
        take = lambda x: np.take_along_axis(x, picks.reshape(picks.shape + (1,) * (x.ndim - 2)), 1)
        texts_kept = [[candidates.texts[i][j] for j in row] for i, row in enumerate(picks)]
        return Drawn(take(candidates.tokens), take(candidates.mask), texts_kept, take(candidates.stopped))

    def _batch(self, prompts: dict, responses: Drawn, labels: dict) -> dict:
        """The objective's global batch, this process's rows of it on device."""
        b = responses.tokens.shape[0]
        host = {"prompt_tokens": prompts["prompt_tokens"], "prompt_mask": prompts["prompt_mask"],
                "response_tokens": responses.tokens.astype(np.int32),
                "response_mask": responses.mask.astype(np.int32),
                "labels": {"example_weight": np.ones((b,), np.float32), **labels}}
        return device_batch(process_rows(host), self.mesh)

    # --- one step ----------------------------------------------------------------------------------------

    def __call__(self, state: TrainState, frozen: FrozenModels, step: int, objective) -> tuple[TrainState, dict]:
        """``(state, batch)`` for ``step`` (1-based): the previous iterate refreshed when due, then generation."""
        if self.plan.needs_previous and (step - 1) % self.iteration_steps == 0:
            state = self._refresh(state)
        prompts = next(self.iterator)
        if self.sampling.reset:
            prompts, self._prefixes = self.reset(state, prompts)
        try:
            return self._rollout(state, frozen, prompts, objective)
        finally:
            self._prefixes = None

    def _rollout(self, state: TrainState, frozen: FrozenModels, prompts: dict, objective) -> tuple[TrainState, dict]:
        device_prompts = {k: jnp.asarray(v) for k, v in prompts.items() if k != "record_index"}
        started = time.perf_counter()
        texts = self._prompt_texts(prompts)
        if self.sampling.candidates is not None:
            source = SERVED.get(self.sampling.responses[0], self.sampling.responses[0])
            candidates = self.draw(state, frozen, device_prompts, objective, source, self.sampling.candidates,
                                   _SLOT_SALT)
            responses = self._rejection_pairs(state, texts, candidates, float(objective.sampling.rejection))
        else:
            groups = _slot_groups(self.sampling.responses)
            drawn = {source: (self.dataset_responses(prompts, len(slots)) if source == DATA else
                              self.draw(state, frozen, device_prompts, objective, source, len(slots), _SLOT_SALT + n))
                     for n, (source, slots) in enumerate(groups.items())}
            responses = _in_slot_order(drawn, groups)
        labels = {}
        if "reward" in self.sampling.labels:
            labels["reward"] = self._rewards(texts, responses)
        if "preference" in self.sampling.labels:
            labels["preference"] = self._judged(texts, [r[0] for r in responses.texts],
                                                [r[1] for r in responses.texts]).astype(np.float32)
        if "win_prob" in self.sampling.labels:
            opponent = SERVED.get(self.sampling.opponent, self.sampling.opponent)
            if opponent == EXTRAPOLATED:
                current = self.draw(state, frozen, device_prompts, objective, POLICY, self.win_samples,
                                    _OPPONENT_SALT)
                half_batch = self._batch(prompts, responses, {**labels,
                                                              "win_prob": self._win_probs(texts, responses, current)})
                half = self._half(state, frozen, half_batch, objective)
                opponents = self.draw(state, frozen, device_prompts, objective, EXTRAPOLATED, self.win_samples,
                                      _HALF_OPPONENT_SALT, params=half)
            else:
                opponents = self.draw(state, frozen, device_prompts, objective, opponent, self.win_samples,
                                      _OPPONENT_SALT)
            labels["win_prob"] = self._win_probs(texts, responses, opponents)
        self._times["generate"] += time.perf_counter() - started
        return state, self._batch(prompts, responses, labels)

    def example_batch(self) -> dict:
        """This process's rows of a host batch of the step's structure and ranks (for its shardings); zeros."""
        b, g, n = self.batch_size, len(self.sampling.responses), self._max_new_tokens
        labels = {"example_weight": np.zeros((b,), np.float32)}
        if "preference" in self.sampling.labels:
            labels["preference"] = np.zeros((b,), np.float32)
        if "win_prob" in self.sampling.labels:
            labels["win_prob"] = np.zeros((b, g), np.float32)
        if "reward" in self.sampling.labels:
            labels["reward"] = np.zeros((b, g), np.float32)
        return process_rows({"prompt_tokens": np.zeros((b, 1), np.int32), "prompt_mask": np.zeros((b, 1), np.int32),
                             "response_tokens": np.zeros((b, g, n), np.int32),
                             "response_mask": np.zeros((b, g, n), np.int32), "labels": labels})

    def add_update_time(self, seconds: float) -> None:
        self._times["update"] += seconds

    def restart(self) -> None:
        """Forgets the times so far (the first step's include compilation)."""
        self._times = dict.fromkeys(self._times, 0.0)
        self._timed_tokens = 0

    def window_row(self) -> dict[str, float]:
        """Generation and timing metrics since the last row; the window starts again.

        ``time/{generate,judge,update}_s`` are seconds in the window, with
        their ``_share`` of the three; ``generate`` excludes the judge's time
        inside it. ``gen/length`` is the mean response length in tokens (stop
        token included), ``gen/eos_rate`` the share ending with a stop token,
        ``gen/tokens_per_s`` tokens generated per second of generation.
        """
        generate_s = self._times["generate"] - self._times["judge"]
        times = {"generate": generate_s, "judge": self._times["judge"], "update": self._times["update"]}
        total = sum(times.values())
        row = {f"time/{k}_s": v for k, v in times.items()}
        row.update({f"time/{k}_share": v / total for k, v in times.items()} if total > 0 else {})
        count = self._generated["responses"]
        if count:
            row.update({"gen/length": self._generated["tokens"] / count,
                        "gen/eos_rate": self._generated["stopped"] / count})
            if generate_s > 0:
                row["gen/tokens_per_s"] = self._timed_tokens / generate_s
        self.restart()
        self._generated = dict.fromkeys(self._generated, 0)
        return row

    # --- measurements ------------------------------------------------------------------------------------

    def measure(self, state: TrainState, frozen: FrozenModels, objective, step: int) -> dict[str, float]:
        """The judge's win rate of the policy against the reference and KL(pi || ref), on fresh samples.

        One policy and one reference response per prompt of the ``step``-th
        batch of a measurement stream of prompts (shuffled apart from the
        training stream, which it leaves untouched): ``online/win_rate`` is the mean of P(y_pi ≻ y_ref);
        ``online/kl`` the mean over the policy's samples of
        ``log pi(y) - log ref(y)`` (an unbiased estimate of the sequence-level
        KL(pi || ref) at temperature 1 without top-k/top-p). These draws do
        not count in the generation metrics.
        """
        counts, times, timed = dict(self._generated), dict(self._times), self._timed_tokens
        prompts = self._measure_prompts[step]
        device_prompts = {k: jnp.asarray(v) for k, v in prompts.items() if k != "record_index"}
        ours = self.draw(state, frozen, device_prompts, objective, POLICY, 1, _MEASURE_SALT)
        theirs = self.draw(state, frozen, device_prompts, objective, REFERENCE, 1, _MEASURE_SALT + 1)
        texts = self._prompt_texts(prompts)
        win = self._judged(texts, [r[0] for r in ours.texts], [r[0] for r in theirs.texts])
        batch = self._batch(prompts, ours, {})
        policy_logps, reference_logps = (np.asarray(x) for x in gathered(self._score(state.params, frozen, batch)))
        self._generated, self._times, self._timed_tokens = counts, times, timed
        return {"online/win_rate": float(win.mean()), "online/kl": float(np.mean(policy_logps - reference_logps))}


def _models(graphdef, plan: Plan) -> Callable:
    """``(params, previous, frozen) -> {source: (model, mixture partner)}`` built lazily by source."""
    def reference(policy, frozen: FrozenModels):
        return reference_decoder(graphdef, plan, policy, frozen)

    def models(params, previous, frozen: FrozenModels, source: str):
        policy = nnx.merge(graphdef, params, frozen.rest)
        if source in (POLICY, EXTRAPOLATED):
            return policy, None
        if source == REFERENCE:
            return reference(policy, frozen), None
        if source == MIXTURE:
            return policy, reference(policy, frozen)
        if source == PREVIOUS:
            return nnx.merge(graphdef, previous, frozen.rest), None
        raise ValueError(f"no model serves sampling source {source!r}")

    return models


def _draw_fn(graphdef, plan: Plan, cfg: SamplingConfig, stops: np.ndarray, mesh, rules) -> Callable:
    """The draw to jit: ``copies`` samples per prompt row from a source, under the mesh's rules."""
    models = _models(graphdef, plan)

    def draw(params, previous, frozen, prompt_tokens, prompt_mask, rng, mixture, *, source, copies, salt):
        with activate(mesh, rules):
            model, partner = models(params, previous, frozen, source)
            tokens = jnp.repeat(prompt_tokens, copies, axis=0)
            mask = jnp.repeat(prompt_mask, copies, axis=0)
            key = jax.random.fold_in(rng, salt)
            return sample(model, tokens, mask, key, cfg, jnp.asarray(stops), ref_model=partner, beta=mixture)

    return draw


def _score_fn(graphdef, plan: Plan, impl: str, mesh, rules) -> Callable:
    """The jitted sequence log-probs ``([B, G], [B, G])`` of a batch's responses under the policy and the reference."""
    models = _models(graphdef, plan)

    def score(params, frozen, batch):
        with activate(mesh, rules):
            out = []
            for source in (POLICY, REFERENCE):
                view = encode_responses(models(params, None, frozen, source)[0], batch)
                logprobs = token_logprobs(view, batch["response_tokens"], impl=impl).logprobs
                out.append(jnp.sum(jnp.where(view.target_mask, logprobs, 0.0), axis=-1))
            return tuple(out)

    return score
