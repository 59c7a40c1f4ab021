"""Chunking long texts into token windows: spans that rebuild the text, windows that encode
takes whole (special tokens and prompt included), the overlap, where chunks end, and the
settings' checks, on crafted texts whose token counts are known and on real long texts."""

import pytest

from embedding_core.chunking import (
    Chunk,
    ChunkingParams,
    chunk_strings,
    chunk_texts,
    content_budget,
    sentence_end_positions,
)
from embedding_core.truncation import truncation_report

# "hello" is one word piece of MiniLM's vocabulary; so is every word of SENTENCE, and "." too.
WORD = "hello "
SENTENCE = "The cat sat on the mat. "  # 7 word pieces


@pytest.fixture(scope="module")
def long_texts(parity_texts, model):
    """The real texts longer than the model's 256 tokens (Python-doc paragraphs)."""
    texts = [text for text, length in zip(parity_texts, model.token_lengths(parity_texts)) if length > 256]
    assert len(texts) >= 10
    return texts


def by_document(chunks: list[Chunk]) -> dict[int, list[Chunk]]:
    grouped: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        grouped.setdefault(chunk.document, []).append(chunk)
    return grouped


def test_a_short_text_is_one_chunk_spanning_the_whole_text(model):
    texts = ["  A short text. ", WORD * 254]
    assert chunk_texts(model, texts, ChunkingParams(256, 32)) == [
        Chunk(document=0, chunk=0, char_start=0, char_end=16, tokens=4),
        Chunk(document=1, chunk=0, char_start=0, char_end=len(WORD) * 254, tokens=254),
    ]


def test_chunks_are_spans_that_rebuild_the_text(model, long_texts):
    chunks = chunk_texts(model, long_texts, ChunkingParams(128, 0))
    for document, parts in by_document(chunks).items():
        text = long_texts[document]
        assert [chunk.chunk for chunk in parts] == list(range(len(parts)))
        assert len(parts) >= 3
        assert parts[0].char_start == 0 and parts[-1].char_end == len(text)
        # Without overlap, chunks follow each other with only spaces between them.
        gaps = [text[before.char_end:after.char_start] for before, after in zip(parts, parts[1:])]
        assert all(gap.strip() == "" for gap in gaps)
        pieces = chunk_strings(long_texts, parts)
        assert "".join(piece + gap for piece, gap in zip(pieces, gaps + [""])) == text
    assert chunk_strings(long_texts, chunks[:1]) == [long_texts[0][:chunks[0].char_end]]


@pytest.mark.parametrize("prompt", [None, "query: "])
def test_encode_never_cuts_a_chunk(model, long_texts, prompt):
    chunks = chunk_texts(model, long_texts + [WORD * 1000], ChunkingParams(256, 64), prompt=prompt)
    strings = chunk_strings(long_texts + [WORD * 1000], chunks)
    lengths = model.token_lengths(strings, prompt)
    assert lengths.max() <= model.max_seq_length == 256
    assert truncation_report(model, strings, prompt).truncated_texts == 0
    # The window leaves room for [CLS], [SEP] and the prompt's 2 word pieces ("query", ":").
    assert max(chunk.tokens for chunk in chunks) == (252 if prompt else 254)
    assert (lengths == [chunk.tokens + (4 if prompt else 2) for chunk in chunks]).all()


def test_neighbouring_chunks_share_the_overlap(model):
    text = WORD * 600
    chunks = chunk_texts(model, [text], ChunkingParams(100, 20))
    # Every word is one token and ends a word: windows of 100 start every 80 tokens.
    assert [(chunk.char_start // len(WORD), chunk.tokens) for chunk in chunks] == [
        (0, 100), (80, 100), (160, 100), (240, 100), (320, 100), (400, 100), (480, 100), (560, 40)]
    assert chunks[1].char_end == len(WORD) * 180 - 1


def test_real_chunks_share_about_the_overlap(model, long_texts):
    chunks = chunk_texts(model, long_texts, ChunkingParams(128, 32))
    shared = []
    for parts in by_document(chunks).values():
        for before, after in zip(parts, parts[1:]):
            overlap_text = long_texts[before.document][after.char_start:before.char_end]
            shared.append(len(model.tokenizer(overlap_text, add_special_tokens=False)["input_ids"]))
    # The next chunk starts at the word nearest 32 tokens back.
    assert len(shared) > 20
    assert all(24 <= tokens <= 40 for tokens in shared)


def test_a_chunk_ends_at_a_sentence_end(model):
    text = SENTENCE * 30
    chunks = chunk_texts(model, [text], ChunkingParams(50, 0))
    # 7 sentences of 7 tokens fill 49 of the 50; the 8th would not fit.
    assert [chunk.tokens for chunk in chunks] == [49, 49, 49, 49, 14]
    assert [text[chunk.char_start:chunk.char_end] for chunk in chunks[:4]] == [SENTENCE * 6 + SENTENCE[:-1]] * 4


def test_a_chunk_ends_between_words_when_no_sentence_ends_in_reach(model):
    text = "word " * 10 + "x" * 40 + " y" * 5  # one sentence; a 40-letter word of several pieces
    chunks = chunk_texts(model, [text], ChunkingParams(12, 0))
    assert text[chunks[0].char_start:chunks[0].char_end] == ("word " * 10).strip()
    assert all(chunk.tokens <= 12 for chunk in chunks)


def test_a_word_longer_than_the_window_is_split_between_word_pieces(model):
    word = "supercalifragilistic" * 4  # 27 word pieces: super ##cal ##if ##rag ##ilis ##tics ...
    chunks = chunk_texts(model, [word], ChunkingParams(8, 2))
    # Cut out of the word, a piece can take more word pieces than in place ("tics" + "up..."
    # is 9 on its own): the text is split again with windows of 7, and each chunk, counted
    # as encode counts it, holds at most the window's 8.
    assert [(chunk.char_start, chunk.char_end, chunk.tokens) for chunk in chunks] == [
        (0, 23, 7), (17, 37, 8), (30, 50, 7), (45, 65, 7), (61, 80, 7)]
    assert (model.token_lengths(chunk_strings([word], chunks)) == [c.tokens + 2 for c in chunks]).all()


def test_a_word_beyond_the_tokenizer_word_limit_is_one_unknown_token(model):
    word = "supercalifragilistic" * 6  # 120 characters: MiniLM's WordPiece makes it [UNK]
    assert chunk_texts(model, [word], ChunkingParams(8, 2)) == [Chunk(0, 0, 0, 120, 1)]


def test_sentence_ends_are_after_stop_marks_before_line_breaks_and_at_the_end():
    assert sentence_end_positions('He said "stop." Then 3.12 came\nout ').tolist() == [15, 30, 34]


def test_an_empty_text_is_refused_by_index(model):
    with pytest.raises(ValueError, match=r"item 1 is empty_text \(empty or only whitespace\): ' \\n'"):
        chunk_texts(model, ["fine", " \n"], ChunkingParams(64))
    with pytest.raises(TypeError, match="item 0 is bytes"):
        chunk_texts(model, [b"bytes"], ChunkingParams(64))


@pytest.mark.parametrize(("tokens", "overlap", "message"), [
    (64, 64, "EMBEDDING_CHUNK_OVERLAP=64 must be smaller than EMBEDDING_CHUNK_TOKENS=64"),
    (64, 100, "EMBEDDING_CHUNK_OVERLAP=100 must be smaller than EMBEDDING_CHUNK_TOKENS=64"),
    (0, 0, "EMBEDDING_CHUNK_TOKENS=0 must be a positive number of tokens "
           "(EMBEDDING_CHUNK_TOKENS=0, EMBEDDING_CHUNK_OVERLAP=0)"),
    (-5, 0, "EMBEDDING_CHUNK_TOKENS=-5 must be a positive number"),
    (64, -1, "EMBEDDING_CHUNK_OVERLAP=-1 must be 0 or more tokens "
             "(EMBEDDING_CHUNK_TOKENS=64, EMBEDDING_CHUNK_OVERLAP=-1)"),
])
def test_invalid_params_name_both_values(tokens, overlap, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ChunkingParams(tokens, overlap)


def test_from_env_reads_the_settings_and_checks_the_model_limit():
    assert ChunkingParams.from_env({}, 256) is None
    assert ChunkingParams.from_env({"EMBEDDING_CHUNK_TOKENS": " "}, 256) is None
    assert ChunkingParams.from_env({"EMBEDDING_CHUNK_TOKENS": "256"}, 256) == ChunkingParams(256, 0)
    assert ChunkingParams.from_env({"EMBEDDING_CHUNK_TOKENS": "200", "EMBEDDING_CHUNK_OVERLAP": "40"},
                                   256) == ChunkingParams(200, 40)
    with pytest.raises(ValueError, match="EMBEDDING_CHUNK_TOKENS=512 is larger than the model's "
                                         r"max_seq_length 256 \(EMBEDDING_CHUNK_OVERLAP=0\)"):
        ChunkingParams.from_env({"EMBEDDING_CHUNK_TOKENS": "512"}, 256)
    with pytest.raises(ValueError, match="whole numbers of tokens: EMBEDDING_CHUNK_TOKENS='2k', "
                                         "EMBEDDING_CHUNK_OVERLAP='0'"):
        ChunkingParams.from_env({"EMBEDDING_CHUNK_TOKENS": "2k"}, 256)


def test_the_window_leaves_room_for_special_tokens_and_prompt(model):
    assert content_budget(model, ChunkingParams(256, 0)) == 254
    assert content_budget(model, ChunkingParams(256, 0), prompt="query: ") == 252
    assert content_budget(model, ChunkingParams(100, 0), prompt="query: ") == 100
    with pytest.raises(ValueError, match="EMBEDDING_CHUNK_OVERLAP=254 leaves no room: a chunk holds 254"):
        content_budget(model, ChunkingParams(256, 254))


def test_the_params_hash_into_an_embedding_version_as_plain_values():
    assert ChunkingParams(200, 40).as_params() == {"chunk_tokens": 200, "chunk_overlap": 40}
    assert ChunkingParams(200, 40) == ChunkingParams(200, 40) and hash(ChunkingParams(200, 40))
