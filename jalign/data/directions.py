"""Direction-conditioned prompts of Directional Preference Alignment: the user's direction in the system prompt.

Wang et al. 2024 (DPA) condition the policy on a unit direction ``v`` over
reward attributes by a system prompt; the authors' released model reads

    You are a helpful, respectful, and honest assistant who always responds to
    the user in a harmless way. Your response should maximize weighted rating =
    helpfulness*{h} + verbosity*{v}

with ``h``, ``v`` the direction's components times 100, rounded to integers
(``(h/100)^2 + (v/100)^2 ≈ 1``; README of
github.com/RLHFlow/Directional-Preference-Alignment). :func:`conditioned`
writes such a prompt, :func:`direction_of` reads the direction back (the
judge scores ``v . r`` with the direction each prompt was given).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

ATTRIBUTES = ("helpfulness", "verbosity")  # the released model's two attributes
PREAMBLE = ("You are a helpful, respectful, and honest assistant who always responds to the user in a harmless "
            "way. Your response should maximize weighted rating = ")


def system_prompt(direction: Sequence[float], attributes: Sequence[str] = ATTRIBUTES) -> str:
    """The DPA system prompt for a unit ``direction`` over ``attributes`` (weights times 100, rounded)."""
    if len(direction) != len(attributes):
        raise ValueError(f"direction has {len(direction)} components for {len(attributes)} attributes")
    if abs(math.hypot(*direction) - 1.0) > 1e-3:
        raise ValueError(f"direction must be a unit vector; |v| = {math.hypot(*direction):.4f}")
    terms = " + ".join(f"{name}*{int(np.round(100 * w))}" for name, w in zip(attributes, direction))
    return PREAMBLE + terms


def direction_at(degrees: float) -> tuple[float, float]:
    """``(cos, sin)`` of an angle in degrees: the authors' (helpfulness, verbosity) parameterisation."""
    rad = math.radians(degrees)
    return math.cos(rad), math.sin(rad)


def conditioned(prompt: Any, direction: Sequence[float], attributes: Sequence[str] = ATTRIBUTES) -> list[dict]:
    """The prompt as chat messages with the direction's system prompt first.

    A string prompt becomes one user message; a message list gets the system
    message in front (it must not have one already).
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if messages and messages[0].get("role") == "system":
        raise ValueError("the prompt already has a system message; DPA's direction is the system prompt")
    return [{"role": "system", "content": system_prompt(direction, attributes)}, *messages]


def direction_of(prompt: Any, attributes: Sequence[str] = ATTRIBUTES) -> np.ndarray:
    """``[K]`` the unit direction written in a conditioned prompt's system message (renormalised after rounding)."""
    text = prompt[0]["content"] if not isinstance(prompt, str) and prompt else prompt
    if not isinstance(text, str) or PREAMBLE not in text:
        raise ValueError(f"the prompt has no DPA system prompt: {str(prompt)[:80]!r}")
    weights = []
    for name in attributes:
        found = re.search(rf"{re.escape(name)}\*(-?\d+)", text)
        if found is None:
            raise ValueError(f"the DPA system prompt names no weight for {name!r}: {text[len(PREAMBLE):]!r}")
        weights.append(float(found.group(1)))
    weights = np.asarray(weights)
    return weights / np.linalg.norm(weights)
