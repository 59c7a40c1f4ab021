"""A separate writer process for the crash and concurrency tests.

    python writer_process.py ROOT embed PARTITION DIM   # embed the partition's current corpus
    python writer_process.py ROOT shards PREFIX COUNT   # write COUNT small shards + embeddings
"""

import sys

import numpy as np

from embedding_core.store import EmbeddingParams, EmbeddingStore, ModelSnapshot, corpus_table


def random_vectors(dim: int):
    def encode(texts: list[str]) -> np.ndarray:
        return np.random.default_rng(len(texts)).standard_normal((len(texts), dim), dtype=np.float32)
    return encode


def snapshot(dim: int) -> ModelSnapshot:
    return ModelSnapshot(model_key="test/model", model="test/model", revision="c" * 40,
                         source="hub", path="/nonexistent", dim=dim)


def main(root: str, command: str, name: str, number: str) -> None:
    store = EmbeddingStore(root)
    if command == "embed":
        dim = int(number)
        store.write_embeddings(name, store.corpus_version(name), snapshot(dim), EmbeddingParams(),
                               random_vectors(dim))
    elif command == "shards":
        for shard in range(int(number)):
            partition = f"{name}-{shard}"
            texts = [f"{partition} text {i}" for i in range(200)]
            corpus = store.write_corpus(partition, corpus_table([f"{partition}:{i}" for i in range(200)], texts))
            store.write_embeddings(partition, corpus, snapshot(16), EmbeddingParams(), random_vectors(16))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
