"""Asset checks that need more than the step that materialized the asset."""

import numpy as np
from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from embedding_assets.assets.embeddings import embeddings
from embedding_assets.resources import EmbeddingStoreResource, EncoderResource

SAMPLE_ROWS_PER_PARTITION = 4
MIN_COSINE = 0.999
MIN_BIT_AGREEMENT = 0.98


@asset_check(asset=embeddings, description=(
    "Re-encodes a few stored texts of every current partition with the current model snapshot "
    "and compares them with the stored vectors: catches a model, revision or parameter mix-up."
))
def embeddings_match_model(
    context: AssetCheckExecutionContext,
    encoder: EncoderResource,
    embedding_store: EmbeddingStoreResource,
) -> AssetCheckResult:
    store = embedding_store.open()
    snapshot = store.current_model_snapshot(encoder.model_name)
    if snapshot is None:
        return AssetCheckResult(passed=False, metadata={"reason": "no model snapshot recorded"})
    params = encoder.params(snapshot)
    texts: list[str] = []
    stored: list[np.ndarray] = []
    checked_partitions = []
    for partition in store.corpus_partitions():
        version = store.embedding_version(partition, snapshot, params,
                                          store.corpus_version(partition).corpus_version)
        if version is None:
            continue
        ids, vectors = store.read_embeddings(version)
        corpus = store.read_corpus(store.corpus_version(partition, version.corpus_version))
        rows = np.random.default_rng(0).choice(
            len(vectors), size=min(SAMPLE_ROWS_PER_PARTITION, len(vectors)), replace=False)
        texts += corpus.column("text").take(rows).to_pylist()
        stored += list(vectors[rows])
        checked_partitions.append(partition)
    if not texts:
        return AssetCheckResult(passed=False, metadata={"reason": "no current embeddings stored"})
    with encoder.encoder(snapshot, params) as encode:
        fresh = encode(texts)
    stored_array = np.stack(stored)
    if params.precision == "float32":
        agreement = np.sum(fresh * stored_array, axis=1) / (
            np.linalg.norm(fresh, axis=1) * np.linalg.norm(stored_array, axis=1))
        threshold = MIN_COSINE
    else:
        agreement = (np.unpackbits(fresh.view(np.uint8), axis=1)
                     == np.unpackbits(stored_array.view(np.uint8), axis=1)).mean(axis=1)
        threshold = MIN_BIT_AGREEMENT
    worst = int(np.argmin(agreement))
    context.log.info(f"compared {len(texts)} texts of {len(checked_partitions)} partition(s)")
    return AssetCheckResult(
        passed=bool(agreement.min() >= threshold),
        metadata={
            "texts_compared": len(texts),
            "partitions": checked_partitions,
            "min_agreement": round(float(agreement.min()), 6),
            "threshold": threshold,
            "worst_text": texts[worst][:200],
        },
    )
