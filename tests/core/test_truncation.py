"""Counting what ``encode`` cuts: texts longer than ``max_seq_length`` tokens (special tokens
included) and the share of tokens dropped, on texts whose token counts are known, and
against what sentence-transformers gives the model."""

import numpy as np

from embedding_core.truncation import TruncationReport, truncation_report

# "hello" is one word piece of MiniLM's vocabulary; [CLS] and [SEP] make two more tokens.
WORD = "hello "


def words(count: int) -> str:
    return WORD * count


def test_a_text_of_exactly_max_seq_length_tokens_is_not_cut_one_token_more_is(model):
    assert model.max_seq_length == 256
    texts = [words(254), words(255), words(300), ""]
    assert model.token_lengths(texts).tolist() == [256, 257, 302, 2]
    report = truncation_report(model, texts)
    assert report == TruncationReport(max_seq_length=256, texts=4, truncated_texts=2,
                                      tokens=256 + 257 + 302 + 2, dropped_tokens=1 + 46)
    assert report.truncated_share == 0.5
    assert report.dropped_token_share == 47 / 817


def test_the_prompt_counts_toward_the_limit(model):
    # "query: " is 2 word pieces ("query", ":"), prepended as encode prepends it.
    assert model.token_lengths([words(254)], prompt="query: ").tolist() == [258]
    assert truncation_report(model, [words(252)], prompt="query: ").truncated_texts == 0
    assert truncation_report(model, [words(253)], prompt="query: ").dropped_tokens == 1


def test_a_lower_limit_cuts_more(model):
    previous = model.max_seq_length
    model.max_seq_length = 128
    try:
        report = truncation_report(model, [words(126), words(127)])
    finally:
        model.max_seq_length = previous
    assert (report.max_seq_length, report.truncated_texts, report.dropped_tokens) == (128, 1, 1)


def test_no_texts_and_no_limit_cut_nothing():
    assert TruncationReport.of_lengths([], 256) == TruncationReport(256, 0, 0, 0, 0)
    assert (TruncationReport.of_lengths([], 256).truncated_share,
            TruncationReport.of_lengths([], 256).dropped_token_share) == (0.0, 0.0)
    assert TruncationReport.of_lengths([10, 5000], None).truncated_texts == 0


def test_the_counted_lengths_are_what_sentence_transformers_cuts(model, reference, parity_texts):
    lengths = model.token_lengths(parity_texts)
    fed = reference.tokenize(parity_texts)["attention_mask"].sum(dim=1).numpy()
    # The texts span 10 to 900+ words: some are cut, most are not.
    assert 0 < (lengths > 256).sum() < len(parity_texts)
    np.testing.assert_array_equal(np.minimum(lengths, 256), fed)
    # The same length test as our own encoder's tokenization.
    np.testing.assert_array_equal(np.minimum(lengths, 256), model.prepare(parity_texts).lengths)


def test_encode_still_embeds_only_the_first_max_seq_length_tokens(model):
    # As sentence-transformers does: counting changes nothing about what is encoded.
    long, cut = model.encode([words(300), words(254)])
    np.testing.assert_allclose(long, cut, atol=1e-6)
