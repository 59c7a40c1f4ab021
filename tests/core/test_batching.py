"""batching: the flat token layout, length order, batch planning, padding and the one
scatter-back that restores the caller's order."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from embedding_core.batching import (
    EncodeOptions,
    Gather,
    TokenizedTexts,
    length_order,
    pad_batch,
    plan_batches,
)


def tokens_of(*rows: list[int], prompt_length: int | None = None) -> TokenizedTexts:
    return TokenizedTexts.from_rows([np.asarray(row, dtype=np.int32) for row in rows], prompt_length)


def test_tokens_are_flat_with_offsets_and_a_subset_is_compact():
    tokens = tokens_of([1, 2, 3], [4], [5, 6], prompt_length=1)
    assert tokens.ids.tolist() == [1, 2, 3, 4, 5, 6] and tokens.offsets.tolist() == [0, 3, 4, 6]
    assert tokens.lengths.tolist() == [3, 1, 2] and len(tokens) == 3
    subset = tokens.subset([2, 0])
    assert subset.ids.tolist() == [5, 6, 1, 2, 3] and subset.offsets.tolist() == [0, 2, 5]
    assert subset.prompt_length == 1 and subset.ids.dtype == np.int32
    assert pickle.loads(pickle.dumps(subset)).rows([1])[0].tolist() == [1, 2, 3]
    assert len(TokenizedTexts.from_rows([])) == 0


def test_length_order_is_longest_first_and_stable():
    assert length_order([2, 5, 2, 7, 5]).tolist() == [3, 1, 4, 0, 2]


def test_batches_respect_the_text_count_and_the_token_budget():
    assert plan_batches([9, 8, 3, 2, 1], batch_size=2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    # A batch's width is its first (longest) text: 100 tokens wide, 2 texts fit 256 tokens;
    # 10 wide, 25 do.
    lengths = [100] * 3 + [10] * 40
    assert plan_batches(lengths, 32, max_tokens_per_batch=256) == [
        slice(0, 2), slice(2, 4), slice(4, 29), slice(29, 43)]
    assert plan_batches([1000], 4, max_tokens_per_batch=10) == [slice(0, 1)]
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches([1], 0)


def test_padding_is_on_the_right_with_a_matching_mask():
    padded = pad_batch([[7, 8, 9], [5]], pad_token_id=0)
    assert padded.input_ids.tolist() == [[7, 8, 9], [5, 0, 0]]
    assert padded.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_gather_puts_sentence_embeddings_back_in_the_callers_order():
    gather = Gather(4, "sentence_embedding")
    gather.add(np.array([3, 1]), torch.tensor([[3.0, 3.0], [1.0, 1.0]], dtype=torch.float16))
    gather.add(np.array([0, 2]), torch.tensor([[0.0, 0.0], [2.0, 2.0]], dtype=torch.float16))
    result = gather.result()
    assert result.dtype == torch.float32 and result[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert Gather(0, "sentence_embedding").result(empty_width=384).shape == (0, 384)


def test_gather_puts_per_text_outputs_back_in_the_callers_order():
    gather = Gather(3, "token_embeddings")
    gather.add(np.array([2, 0]), ["c", "a"])
    gather.add(np.array([1]), ["b"])
    assert gather.result() == ["a", "b", "c"]


def test_encode_options_are_one_frozen_value():
    options = EncodeOptions(batch_size=8, normalize_embeddings=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 4
    assert pickle.loads(pickle.dumps(options)) == options
    assert EncodeOptions().output_value == "sentence_embedding"
