"""EncoderResource.backend in real materializations: auto by default, EMBEDDING_BACKEND to pick
another; a lossy backend's vectors are their own version and the spot check holds for both."""

import numpy as np
import pytest
from dagster import AssetKey

from embedding_assets.backfill import materialize_selection
from embedding_assets.definitions import build_definitions, definitions_from_env
from embedding_assets.partitions import LANDING_BUCKETS
from embedding_assets.resources import EncoderResource
from embedding_core.hub import DEFAULT_MODEL_NAME
from embedding_core.landing import bucket_of
from embedding_core.store import EmbeddingStore, version_key
from tests.assets.conftest import materialize_everything


def test_the_backend_comes_from_embedding_backend_and_defaults_to_auto():
    assert definitions_from_env({}).resources["encoder"].backend == "auto"
    env = {"EMBEDDING_BACKEND": "openvino-int8"}
    encoder = definitions_from_env(env).resources["encoder"]
    assert (encoder.backend, encoder.open().backend) == ("openvino-int8", "openvino-int8")
    with pytest.raises(ValueError, match="'int4'"):
        EncoderResource(model_name=DEFAULT_MODEL_NAME, backend="int4").open()


def test_a_lossy_backend_materializes_its_own_version_beside_the_exact_one(tmp_path, landing, instance):
    store_root = str(tmp_path / "store")
    exact = build_definitions(store_root=store_root, landing_dir=str(landing))
    materialize_everything(exact, instance)
    store = EmbeddingStore(store_root)
    exact_versions = {v.partition: v for v in store.embedding_versions()}
    assert {v.params.get("backend") for v in exact_versions.values()} == {None}

    int8 = build_definitions(store_root=store_root, landing_dir=str(landing),
                             encoder=EncoderResource(model_name=DEFAULT_MODEL_NAME, backend="openvino-int8"))
    results = materialize_everything(int8, instance)
    checks = [e for r in results for e in r.get_asset_check_evaluations()]
    assert checks and all(check.passed for check in checks)  # embeddings_match_model included
    versions = store.embedding_versions()
    lossy = {v.partition: v for v in versions if v.params.get("backend") == "openvino-int8"}
    assert set(lossy) == set(exact_versions) and len(versions) == 2 * len(lossy)
    for partition, version in lossy.items():
        assert version.reused_rows == 0 and version.params_hash != exact_versions[partition].params_hash
        _, lossy_vectors = store.read_embeddings(version)
        _, exact_vectors = store.read_embeddings(exact_versions[partition])
        assert not np.array_equal(lossy_vectors, exact_vectors)
        # A candidate beside the serving exact version until promoted.
        assert store.current_embedding_version(partition, version.model).version_id == \
            exact_versions[partition].version_id
    model = next(iter(lossy.values())).model
    lossy_key = version_key(next(iter(lossy.values())).revision, next(iter(lossy.values())).params_hash)
    store.promote(model, lossy_key, reason="int8")
    for partition, version in lossy.items():
        assert store.current_embedding_version(partition, model).version_id == version.version_id

    # Back to the default: nothing re-encoded, and a rollback serves the exact version again.
    buckets = sorted({bucket_of(partition, LANDING_BUCKETS) for partition in exact_versions})
    again = materialize_selection(exact, instance, [AssetKey("embeddings")], buckets)
    assert all(result.success for result in again)
    encoded = [m.metadata["encoded_rows"].value for r in again for m in r.asset_materializations_for_node("landing_buckets")
               if m.asset_key == AssetKey("embeddings")]
    assert len(encoded) == len(exact_versions) and set(encoded) == {0}
    store.rollback(model)
    for partition, version in exact_versions.items():  # the exact version is current again
        current = store.current_embedding_version(partition, version.model)
        assert current.version_id == version.version_id
    assert len(store.embedding_versions()) == len(versions)
