"""Chunking long texts (`embedding_core.chunking`, issue 20): the splitters, retrieval, throughput.

Documents: every distinct text of tests/data/mixed_texts.jsonl and the sample corpus's
python_docs.jsonl longer than the model's max_seq_length (`--documents` caps how many).

1. Splitters, same window and overlap: ours (ends at a sentence end, else a word end), plain
   windows of the token ids (spans of their offsets), and semantic-text-splitter (when
   installed) sized with the model's own Hugging Face tokenizer. For each: chunks per
   document, time per 1,000 documents (best of 3), share of chunks that end at a sentence end
   (the last chunk of a document, which ends with it, left out), chunks encode would cut.
2. Retrieval in memory: each document's query is one sentence that starts past the tokens
   encode keeps. Documents are encoded truncated (one vector, today) and chunked (a document
   scores its best chunk's cosine); the share of queries whose document is in the top 10 of
   all documents (goal with chunking: >= 90%).
3. Throughput: tokens/s (special tokens included) encoding our chunks, beside unchunked texts
   (no longer than max_seq_length) of about the same total tokens, and beside the truncated
   documents; best of 2, interleaved, with the pipeline's default backend.
4. With ``--store``: the same retrieval through ``EmbeddingStore``: the documents written
   chunked (and, for the baseline, truncated) into a temporary store, and the queries answered
   by ``search`` (a document by its best chunk), by the exact scan and by the vector index.

    .venv/bin/python benchmarks/bench_chunking.py [--tokens 256 --overlap 32 --documents 300] [--store]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import DATA_DIR, best_seconds, write_results  # noqa: E402
from embedding_assets.definitions import SAMPLE_CORPUS_DIR  # noqa: E402
from embedding_core.backends import resolve_backend  # noqa: E402
from embedding_core.chunking import (  # noqa: E402
    Chunk,
    ChunkingParams,
    chunk_strings,
    chunk_texts,
    content_budget,
    sentence_end_positions,
)
from embedding_core.hub import bundled_model_path  # noqa: E402
from embedding_core.model import SentenceTransformer  # noqa: E402

SOURCES = (DATA_DIR / "mixed_texts.jsonl", Path(SAMPLE_CORPUS_DIR) / "python_docs.jsonl")
UNCHUNKED_SOURCES = SOURCES + (DATA_DIR / "short_texts.jsonl",)
TOP_K = 10
QUERY_MIN_WORDS = 6

Splitter = Callable[[list[str]], list[Chunk]]


def read_texts(paths: tuple[Path, ...]) -> list[str]:
    """The distinct texts of these JSONL files, in file order."""
    texts: dict[str, None] = {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            texts.update((json.loads(line)["text"], None) for line in fh if line.strip())
    return list(texts)


def token_offsets(model: SentenceTransformer, texts: list[str]) -> list[np.ndarray]:
    encoded = model.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                              return_attention_mask=False, return_token_type_ids=False, verbose=False)
    return [np.asarray(row, dtype=np.int64).reshape(-1, 2) for row in encoded["offset_mapping"]]


def token_windows(model: SentenceTransformer, params: ChunkingParams) -> Splitter:
    """Plain windows of the token ids: ``budget`` tokens every ``budget - overlap``, as spans."""
    budget = content_budget(model, params)

    def split(texts: list[str]) -> list[Chunk]:
        chunks = []
        for document, (text, offsets) in enumerate(zip(texts, token_offsets(model, texts))):
            starts = range(0, max(len(offsets) - params.overlap, 1), budget - params.overlap)
            for number, first in enumerate(starts):
                last = min(first + budget, len(offsets)) - 1
                char_end = len(text) if last == len(offsets) - 1 else int(offsets[last, 1])
                chunks.append(Chunk(document, number, int(offsets[first, 0]) if first else 0, char_end,
                                    last - first + 1))
        return chunks
    return split


def library_splitter(model: SentenceTransformer, params: ChunkingParams) -> Splitter | None:
    """semantic-text-splitter with the model's tokenizer and our window, if installed."""
    try:
        from semantic_text_splitter import TextSplitter
    except ImportError:
        return None
    splitter = TextSplitter.from_huggingface_tokenizer(model.tokenizer.backend_tokenizer,
                                                       content_budget(model, params), params.overlap)

    def split(texts: list[str]) -> list[Chunk]:
        return [Chunk(document, number, start, start + len(piece), 0)
                for document, text in enumerate(texts)
                for number, (start, piece) in enumerate(splitter.chunk_indices(text))]
    return split




def split_report(model: SentenceTransformer, name: str, split: Splitter, texts: list[str]) -> tuple[dict, list[Chunk]]:
    """What one splitter does to ``texts``: chunks, time, sentence ends, chunks encode cuts."""
    seconds = best_seconds(lambda: split(texts), repeats=3)
    chunks = split(texts)
    ends = [set(sentence_end_positions(text).tolist()) for text in texts]
    last = {chunk.document: chunk.chunk for chunk in chunks}
    inner = [chunk for chunk in chunks if chunk.chunk < last[chunk.document]]
    at_sentence_end = sum(
        chunk.char_start + len(texts[chunk.document][chunk.char_start:chunk.char_end].rstrip())
        in ends[chunk.document] for chunk in inner)
    lengths = model.token_lengths(chunk_strings(texts, chunks))
    row = {"splitter": name, "documents": len(texts), "chunks": len(chunks),
           "chunks_per_document": len(chunks) / len(texts),
           "seconds_per_1000_documents": seconds * 1000 / len(texts),
           "inner_chunks_ending_at_sentence_end": at_sentence_end / max(len(inner), 1),
           "chunks_cut_by_encode": int((lengths > model.max_seq_length).sum()),
           "mean_tokens_per_chunk": float(lengths.mean())}
    print(f"{name:>22}: {row['chunks_per_document']:.2f} chunks/document, "
          f"{row['seconds_per_1000_documents']:.2f} s per 1,000 documents, "
          f"{row['inner_chunks_ending_at_sentence_end']:.1%} of inner chunks end at a sentence end, "
          f"{row['chunks_cut_by_encode']} chunks cut by encode, {row['mean_tokens_per_chunk']:.0f} tokens/chunk")
    return row, chunks


def pick_queries(model: SentenceTransformer, texts: list[str], seed: int) -> list[tuple[int, str]]:
    """(document, query): one sentence of at least QUERY_MIN_WORDS words that starts past the
    content tokens encode keeps, picked at random; documents with none are left out."""
    rng = random.Random(seed)
    kept = model.max_seq_length - int(model.token_lengths([""])[0])
    queries = []
    for document, (text, offsets) in enumerate(zip(texts, token_offsets(model, texts))):
        cut = int(offsets[kept - 1, 1])
        bounds = [0, *sentence_end_positions(text).tolist()]
        sentences = [(start, text[start:end].strip()) for start, end in zip(bounds, bounds[1:])]
        beyond = [sentence for start, sentence in sentences
                  if start >= cut and len(sentence.split()) >= QUERY_MIN_WORDS]
        if beyond:
            queries.append((document, rng.choice(beyond)))
    return queries


def top_k_share(scores: np.ndarray, answers: np.ndarray) -> tuple[float, float]:
    """Share of queries whose document is in the top TOP_K, and at the top."""
    answer_scores = scores[np.arange(len(answers)), answers]
    ranks = (scores > answer_scores[:, None]).sum(axis=1)
    return float((ranks < TOP_K).mean()), float((ranks == 0).mean())


def best_chunk_scores(query_vectors: np.ndarray, chunk_vectors: np.ndarray, chunks: list[Chunk]) -> np.ndarray:
    """A document's score per query: its best chunk's cosine (chunks come in document order)."""
    firsts = np.flatnonzero([chunk.chunk == 0 for chunk in chunks])
    return np.maximum.reduceat(query_vectors @ chunk_vectors.T, firsts, axis=1)


def unchunked_texts(model: SentenceTransformer, tokens: int, seed: int) -> list[str]:
    """Texts encode takes whole, shuffled, until they hold about ``tokens`` tokens."""
    texts = read_texts(UNCHUNKED_SOURCES)
    random.Random(seed).shuffle(texts)
    lengths = model.token_lengths(texts)
    fitting = [(text, length) for text, length in zip(texts, lengths) if length <= model.max_seq_length]
    total = np.cumsum([length for _, length in fitting])
    return [text for text, _ in fitting[: int(np.searchsorted(total, tokens)) + 1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--documents", type=int, default=300, help="at most this many long documents")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--store", action="store_true", help="also measure retrieval through EmbeddingStore")
    args = parser.parse_args()
    started = time.perf_counter()
    model = SentenceTransformer(bundled_model_path(), device="cpu", backend=resolve_backend(args.backend, "cpu"))
    params = ChunkingParams(args.tokens, args.overlap)
    texts = read_texts(SOURCES)
    documents = [text for text, length in zip(texts, model.token_lengths(texts)) if length > model.max_seq_length]
    documents = documents[: args.documents]
    print(f"{len(documents)} documents longer than max_seq_length {model.max_seq_length} "
          f"(of {len(texts)} distinct texts); window {params.tokens}, overlap {params.overlap}, "
          f"{content_budget(model, params)} tokens of content per chunk; backend {model.backend}\n")

    splitters: dict[str, Splitter | None] = {
        "ours (sentence-aware)": lambda batch: chunk_texts(model, batch, params),
        "token windows": token_windows(model, params),
        "semantic-text-splitter": library_splitter(model, params),
    }
    results, chunkings = [], {}
    for name, split in splitters.items():
        if split is None:
            print(f"{name:>22}: not installed (pip install semantic-text-splitter)")
            continue
        row, chunkings[name] = split_report(model, name, split, documents)
        results.append(row)

    queries = pick_queries(model, documents, args.seed)
    answers = np.array([document for document, _ in queries])
    query_vectors = model.encode([query for _, query in queries], normalize_embeddings=True)
    print(f"\nretrieval: {len(queries)} queries (one sentence past token {model.max_seq_length} of a "
          f"document), top {TOP_K} of {len(documents)} documents")
    model.encode(documents[:32])  # warm-up: the runtime's first batches
    encoded: dict[str, tuple[float, int]] = {}

    def encode_timed(name: str, strings: list[str]) -> np.ndarray:
        """Encode ``strings``, keeping the best tokens/s seen under ``name``."""
        began = time.perf_counter()
        vectors = model.encode(strings, normalize_embeddings=True)
        seconds = time.perf_counter() - began
        tokens = int(np.minimum(model.token_lengths(strings), model.max_seq_length).sum())
        best = encoded.get(name, (0.0, tokens))[0]
        encoded[name] = (max(best, tokens / seconds), tokens)
        return vectors

    truncated_vectors = encode_timed("truncated documents", documents)
    recall, top1 = top_k_share(query_vectors @ truncated_vectors.T, answers)
    print(f"{'truncated (today)':>22}: {recall:.1%} in the top {TOP_K}, {top1:.1%} first")
    results.append({"retrieval": "truncated", "queries": len(queries), "top_k_share": recall, "top_1_share": top1})
    for name, chunks in chunkings.items():
        strings = chunk_strings(documents, chunks)
        vectors = encode_timed(name, strings)
        recall, top1 = top_k_share(best_chunk_scores(query_vectors, vectors, chunks), answers)
        print(f"{name:>22}: {recall:.1%} in the top {TOP_K}, {top1:.1%} first")
        results.append({"retrieval": name, "queries": len(queries), "top_k_share": recall, "top_1_share": top1})

    ours = chunk_strings(documents, chunkings["ours (sentence-aware)"])
    reference = unchunked_texts(model, encoded["ours (sentence-aware)"][1], args.seed)
    encode_timed("unchunked texts", reference)
    # A second round, interleaved: the machine is shared.
    encode_timed("ours (sentence-aware)", ours)
    encode_timed("unchunked texts", reference)
    encode_timed("truncated documents", documents)
    print(f"\nthroughput (best of 2, {model.backend}):")
    chunk_rate = encoded["ours (sentence-aware)"][0]
    for name in ("ours (sentence-aware)", "unchunked texts", "truncated documents"):
        rate, tokens = encoded[name]
        print(f"{name:>22}: {rate:,.0f} tokens/s over {tokens:,} tokens "
              f"(chunks at {chunk_rate / rate:.1%} of it)")
        results.append({"throughput": name, "tokens": tokens, "tokens_per_second": rate})
    if args.store:
        results += store_retrieval(documents, queries, query_vectors, params, args.backend)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    write_results(args.json, results)


def store_retrieval(documents: list[str], queries: list[tuple[int, str]], query_vectors: np.ndarray,
                    params: ChunkingParams, backend: str) -> list[dict]:
    """Share of queries whose document `EmbeddingStore.search` puts in the top 10, with the
    documents stored truncated and chunked, by the exact scan and through the vector index."""
    import tempfile

    from embedding_core.snapshot import EncoderConfig
    from embedding_core.store import EmbeddingStore, corpus_table

    ids = [f"doc-{i}" for i in range(len(documents))]
    answers = [ids[document] for document, _ in queries]
    print(f"\nthrough EmbeddingStore.search (top {TOP_K} documents, each by its best chunk):")
    rows = []
    for name, chunking in (("truncated", None), (f"chunked {params.tokens}/{params.overlap}", params)):
        config = EncoderConfig(str(bundled_model_path()), normalize_embeddings=True, backend=backend,
                               chunk_tokens=chunking.tokens if chunking else None,
                               chunk_overlap=chunking.overlap if chunking else 0)
        with tempfile.TemporaryDirectory(prefix="bench-chunking-store-") as root:
            store = EmbeddingStore(root)
            snapshot = config.resolve()
            store.record_model_snapshot(snapshot)
            embedding_params = config.params(snapshot)
            corpus = store.write_corpus("documents", corpus_table(ids, documents))
            with config.session(snapshot, embedding_params) as session:
                written = store.write_embeddings("documents", corpus, snapshot, embedding_params, session.encode,
                                                 chunker=session.chunk if chunking else None)
            store.build_vector_indexes()
            for path, exact in (("exact scan", True), ("vector index", False)):
                hits = store.search_batch(query_vectors, snapshot.model, top_k=TOP_K, exact=exact)
                share = float(np.mean([answer in {hit.id for hit in found} for answer, found in
                                       zip(answers, hits, strict=True)]))
                distinct = all(len({hit.id for hit in found}) == len(found) for found in hits)
                print(f"{name:>22}: {written.version.rows:,} rows, {path}: {share:.1%} in the top {TOP_K}"
                      f"{'' if distinct else ' (a document twice!)'}")
                rows.append({"store_retrieval": name, "path": path, "rows": written.version.rows,
                             "top_k_share": share})
    return rows


if __name__ == "__main__":
    main()
