"""Padding to bucketed lengths, checked against hand-written arrays."""

import numpy as np
import pytest

from jalign.data import Collator, TokenizedExample, bucket_lengths


def _example(index, prompt, responses, **labels):
    return TokenizedExample(
        index=index, prompt=np.asarray(prompt, np.int32),
        responses=tuple(np.asarray(r, np.int32) for r in responses),
        labels={k: np.asarray(v, np.float32) for k, v in labels.items()})


@pytest.mark.parametrize("max_length, smallest, expected", [
    (100, 16, (16, 32, 64, 100)),
    (64, 16, (16, 32, 64)),
    (10, 16, (10,)),
    (20, 4, (4, 8, 16, 20)),
])
def test_bucket_lengths(max_length, smallest, expected):
    """Powers of two below the maximum, then the maximum."""
    assert bucket_lengths(max_length, smallest=smallest) == expected


def test_collate_pads_left_and_right_and_fills_rows():
    """Two examples in a batch of 3: prompts left-padded to bucket 4,
    responses right-padded to bucket 4, a third all-padding row with
    example_weight 0 and record_index -1."""
    collate = Collator(batch_size=3, prompt_buckets=(2, 4, 8),
                       response_buckets=(4, 8), pad_id=0)
    batch = collate([
        _example(5, [11, 12, 13], [[21, 22], [23]], preference=1.0),
        _example(9, [14], [[24, 25, 26], [27, 28]], preference=0.25),
    ])
    np.testing.assert_array_equal(batch["prompt_tokens"], [
        [0, 11, 12, 13], [0, 0, 0, 14], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["prompt_mask"], [
        [0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["response_tokens"], [
        [[21, 22, 0, 0], [23, 0, 0, 0]],
        [[24, 25, 26, 0], [27, 28, 0, 0]],
        [[0, 0, 0, 0], [0, 0, 0, 0]]])
    np.testing.assert_array_equal(batch["response_mask"], [
        [[1, 1, 0, 0], [1, 0, 0, 0]],
        [[1, 1, 1, 0], [1, 1, 0, 0]],
        [[0, 0, 0, 0], [0, 0, 0, 0]]])
    np.testing.assert_array_equal(batch["record_index"], [5, 9, -1])
    np.testing.assert_array_equal(batch["labels"]["example_weight"], [1, 1, 0])
    np.testing.assert_array_equal(batch["labels"]["preference"], [1, 0.25, 0])
    assert batch["prompt_tokens"].dtype == np.int32
    assert batch["response_tokens"].dtype == np.int32


def test_collate_per_response_labels():
    """[G] labels stack to [B, G]; an empty prompt is all padding."""
    collate = Collator(batch_size=2, prompt_buckets=(2,),
                       response_buckets=(2,), pad_id=-1)
    batch = collate([_example(0, [], [[1], [2], [3]], score=[3, 2, 1]),
                     _example(1, [4], [[5], [6], [7, 8]], score=[0, 0, -1])])
    assert batch["response_tokens"].shape == (2, 3, 2)
    np.testing.assert_array_equal(batch["prompt_tokens"], [[-1, -1], [-1, 4]])
    np.testing.assert_array_equal(batch["labels"]["score"],
                                  [[3, 2, 1], [0, 0, -1]])


def test_collate_rejects_lengths_beyond_the_buckets():
    """A length beyond the largest bucket is an error, not a silent cut."""
    collate = Collator(batch_size=1, prompt_buckets=(2,),
                       response_buckets=(2,), pad_id=0)
    with pytest.raises(ValueError, match="response length 3 exceeds"):
        collate([_example(0, [1], [[1, 2, 3]])])
