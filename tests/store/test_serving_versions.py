"""Version sets and the one serving version of each model (issue 26, the store side).

A model revision bump written for one partition only (a rollout stopped halfway) is a
candidate beside the serving version: the views, search and the vector index keep serving
the old revision everywhere until the candidate is complete and promoted, in one commit;
rollback serves the old one again, its index included. Real store, `TextHashEncoder`
vectors (salted per revision: another revision gives other vectors for the same text).
"""

import os
from datetime import timedelta

import numpy as np
import pytest

from embedding_core.store import (
    EmbeddingParams,
    EmbeddingStore,
    VersionError,
    corpus_table,
    version_key,
)
from embedding_core.store.views import SCHEMA_VERSION
from tests.store.fakes import SNAPSHOT, TextHashEncoder, bumped

DIM = 16
A = bumped(SNAPSHOT, revision="a" * 40, dim=DIM)
B = bumped(SNAPSHOT, revision="b" * 40, dim=DIM)
PARAMS = EmbeddingParams()
KEY_A, KEY_B = version_key(A.revision, PARAMS.params_hash), version_key(B.revision, PARAMS.params_hash)
MODEL = A.model


def encoder(snapshot) -> TextHashEncoder:
    """The 'model' of a revision: other weights, other vectors."""
    return TextHashEncoder(dim=DIM, salt=snapshot.revision[:1])


def texts(partition: str) -> list[str]:
    return [f"{partition} document {i}: {word} of the {partition} shard" for i, word in
            enumerate(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"])]


def write(store: EmbeddingStore, partition: str, snapshot, params: EmbeddingParams = PARAMS, enc=None):
    corpus = store.corpus_version(partition) or store.write_corpus(
        partition, corpus_table([f"{partition}{i}" for i in range(8)], texts(partition)))
    return store.write_embeddings(partition, corpus, snapshot, params, enc or encoder(snapshot))


def write_half_finished_rollout(store: EmbeddingStore) -> None:
    """Partitions p1 and p2 embedded with revision A; revision B written for p1 only (the
    `half_finished_rollout` fixture: a copy of this store, written once per session)."""
    store.record_model_snapshot(A)
    write(store, "p1", A)
    write(store, "p2", A)
    store.record_model_snapshot(B)
    write(store, "p1", B)


def served(store: EmbeddingStore, **connect) -> list[tuple]:
    """(partition, revision) of the rows `embeddings` shows for the model."""
    with store.connect(**connect) as con:
        return con.execute("SELECT DISTINCT partition, revision FROM embeddings WHERE model = ? ORDER BY ALL",
                           [MODEL]).fetchall()


def test_a_half_finished_rollout_serves_the_old_revision_everywhere_and_the_candidate_by_key(half_finished_rollout):
    store = half_finished_rollout
    target = texts("p2")[3]

    # Views: revision A in both partitions, nothing of B mixed in.
    assert served(store) == [("p1", A.revision), ("p2", A.revision)]
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT revision FROM document_embeddings").fetchall() == [(A.revision,)]
        assert con.execute("SELECT version_key, count(*) FROM all_version_embeddings GROUP BY 1 ORDER BY 1"
                           ).fetchall() == [(KEY_A, 16), (KEY_B, 8)]
    assert store.current_embedding_version("p1", MODEL).revision == A.revision

    # Search: the second partition's text, encoded as A encodes it, finds itself at ~1.0.
    hits = store.search(encoder(A).vector(target), MODEL, top_k=2)
    assert (hits[0].id, hits[0].partition, hits[0].text) == ("p23", "p2", target)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and hits[1].score < 0.9
    # The vector index is A's, and answers the same.
    (build,) = store.build_vector_indexes()
    assert (build.record.revision, build.record.rows) == (A.revision, 16)
    searcher = store.searcher(MODEL)
    assert searcher.uses_index and searcher.version_key == KEY_A
    assert searcher.search(encoder(A).vector(target), 1)[0].id == "p23"

    # The candidate: visible by key with its coverage, queried explicitly.
    sets = {s.key: s for s in store.version_sets(MODEL)}
    assert [(s.key, s.serving, s.partitions_covered, s.partitions_total, s.complete, s.rows)
            for s in sets.values()] == [(KEY_A, True, 2, 2, True, 16), (KEY_B, False, 1, 2, False, 8)]
    assert store.serving_version(MODEL) == sets[KEY_A]
    assert (sets[KEY_B].revision, sets[KEY_B].params_hash, sets[KEY_B].dim) == (B.revision, PARAMS.params_hash, DIM)
    own = texts("p1")[5]
    assert store.search(encoder(B).vector(own), MODEL, top_k=1, version=KEY_B)[0].id == "p15"
    assert store.search(encoder(B).vector(own), MODEL, top_k=1)[0].score < 0.9  # not B's space

    # What the rollout still has to write: p2 for B, nothing for A; writing B again reuses it.
    assert store.stale_partitions(B, PARAMS) == ["p2"]
    assert store.stale_partitions(A, PARAMS) == []
    again = write(store, "p1", B)
    assert (again.created, again.encoded_rows) == (False, 0)

    # A query of another dimension, or encoded with another revision: refused, naming both.
    with pytest.raises(ValueError, match=f"the query has 8 dimensions; the vectors of {MODEL} have {DIM} "
                                         rf"\(version {KEY_A}\)"):
        store.search(np.ones(8, np.float32), MODEL)
    with pytest.raises(ValueError, match=f"encoded with {MODEL}@{B.revision}, but version {KEY_A} of {MODEL} "
                                         f"holds vectors of revision {A.revision}"):
        store.search(encoder(B).vector(target), MODEL, snapshot=B)
    assert store.search(encoder(A).vector(target), MODEL, top_k=1, snapshot=A)[0].id == "p23"
    assert store.version_snapshot(sets[KEY_B]) == B


def test_new_partitions_under_the_serving_configuration_extend_it(half_finished_rollout):
    store = half_finished_rollout
    write(store, "p3", A)  # a new landing file, embedded as the serving version is
    assert served(store) == [("p1", A.revision), ("p2", A.revision), ("p3", A.revision)]
    assert [(s.key, s.partitions_covered, s.partitions_total) for s in store.version_sets()] == [
        (KEY_A, 3, 3), (KEY_B, 1, 3)]
    assert store.search(encoder(A).vector(texts("p3")[0]), MODEL, top_k=1)[0].id == "p30"


def test_completing_and_promoting_switches_views_search_and_index_at_once_and_rollback_restores(half_finished_rollout):
    store = half_finished_rollout
    (index_a,) = store.build_vector_indexes()
    write(store, "p2", B)  # the rollout completes
    assert store.version_set(KEY_B).complete
    assert served(store) == [("p1", A.revision), ("p2", A.revision)]  # still A: nothing promoted yet
    # B's index, built before its promotion.
    (index_b,) = store.build_vector_indexes(MODEL, version=KEY_B)
    assert (index_b.record.revision, index_b.record.rows) == (B.revision, 16)
    assert store.searcher(MODEL).loaded.record.index_id == index_a.record.index_id
    commits = len(store.lake_snapshots())

    promotion = store.promote(MODEL, KEY_B, run_id="run-7", metrics={"recall@10": 0.97}, reason="better")
    assert len(store.lake_snapshots()) == commits + 1  # one commit
    assert (promotion.model, promotion.from_key, promotion.to_key, promotion.metrics, promotion.reason,
            promotion.forced, promotion.run_id) == (MODEL, KEY_A, KEY_B, {"recall@10": 0.97}, "better", False, "run-7")
    assert served(store) == [("p1", B.revision), ("p2", B.revision)]
    searcher = store.searcher(MODEL)
    assert searcher.version_key == KEY_B and searcher.loaded.record.index_id == index_b.record.index_id
    hits = searcher.search(encoder(B).vector(texts("p2")[3]), 1)
    assert hits[0].id == "p23" and hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert [(s.key, s.serving, s.previous) for s in store.version_sets()] == [(KEY_A, False, True),
                                                                              (KEY_B, True, False)]
    # The default build now brings B's index up; A's stays as it was.
    assert store.build_vector_indexes()[0].unchanged

    # Time travel shows what served before the promotion.
    assert served(store, snapshot=promotion.snapshot_id - 1) == [("p1", A.revision), ("p2", A.revision)]

    indexes_before = {r.index_id for r in store.vector_indexes()}
    back = store.rollback(MODEL, reason="regression")
    assert (back.from_key, back.to_key, back.reason) == (KEY_B, KEY_A, "rollback: regression")
    assert served(store) == [("p1", A.revision), ("p2", A.revision)]
    searcher = store.searcher(MODEL)
    assert searcher.uses_index and searcher.loaded.record.index_id == index_a.record.index_id  # no rebuild
    assert {r.index_id for r in store.vector_indexes()} == indexes_before
    assert searcher.search(encoder(A).vector(texts("p2")[3]), 1)[0].id == "p23"
    assert [(p.from_key, p.to_key) for p in store.promotions(MODEL)] == [(KEY_A, KEY_B), (KEY_B, KEY_A)]


def test_promoting_a_set_of_another_dimension_retypes_the_embeddings_view_in_the_same_commit(tmp_path):
    store = EmbeddingStore(tmp_path / "store")
    write(store, "p1", A)
    truncated = EmbeddingParams(truncate_dim=4)
    write(store, "p1", A, truncated, enc=TextHashEncoder(dim=4))
    key = version_key(A.revision, truncated.params_hash)
    with store.connect() as con:
        assert con.execute("SELECT DISTINCT typeof(embedding) FROM embeddings").fetchall() == [(f"FLOAT[{DIM}]",)]
    promotion = store.promote(MODEL, key)
    with store.connect(snapshot=promotion.snapshot_id) as con:
        assert con.execute("SELECT DISTINCT typeof(embedding) FROM embeddings").fetchall() == [("FLOAT[4]",)]
    with pytest.raises(ValueError, match=rf"the query has {DIM} dimensions; the vectors of {MODEL} have 4 "
                                         rf"\(version {key}\)"):
        store.search(np.ones(DIM, np.float32), MODEL)
    assert store.search(TextHashEncoder(dim=4).vector(texts("p1")[2]), MODEL, top_k=1)[0].id == "p12"


def test_bad_promotions_and_rollbacks_name_the_item_and_store_nothing(half_finished_rollout):
    store = half_finished_rollout
    other = bumped(A, model="test/other", model_key="test/other", revision="c" * 40)
    write(store, "p1", other)
    key_other = version_key(other.revision, PARAMS.params_hash)
    commits, sets = len(store.lake_snapshots()), store.version_sets()

    with pytest.raises(VersionError, match=f"version '{KEY_B}' of model '{MODEL}' is incomplete: it covers 1 of 2 "
                                           r"partitions \(missing p2\).*force=True"):
        store.promote(MODEL, KEY_B)
    with pytest.raises(VersionError, match=f"no version 'ffffffff-00000000' of model '{MODEL}' in .*; known: "
                                           f"{KEY_A}, {KEY_B}"):
        store.promote(MODEL, "ffffffff-00000000")
    with pytest.raises(VersionError, match=f"version '{key_other}' belongs to model 'test/other', not '{MODEL}'"):
        store.promote(MODEL, key_other)
    with pytest.raises(VersionError, match=f"version '{KEY_A}' already serves model '{MODEL}'"):
        store.promote(MODEL, KEY_A)
    with pytest.raises(VersionError, match=f"model '{MODEL}' has no previous serving version to roll back to: "
                                           f"{KEY_A} serves it"):
        store.rollback(MODEL)
    with pytest.raises(VersionError, match="model 'no/such' has no embeddings in .*; models: test/model, test/other"):
        store.rollback("no/such")
    with pytest.raises(VersionError, match=f"no version 'ffffffff-00000000' of model '{MODEL}'"):
        store.search(np.ones(DIM, np.float32), MODEL, version="ffffffff-00000000")
    # Nothing was stored: no commit, no promotion, the same sets serving.
    assert len(store.lake_snapshots()) == commits and store.promotions() == []
    assert store.version_sets() == sets
    assert served(store) == [("p1", A.revision), ("p2", A.revision)]

    # force promotes an incomplete set, and says so; p2 then has no vectors served.
    forced = store.promote(MODEL, KEY_B, force=True, reason="hotfix")
    assert forced.forced and served(store) == [("p1", B.revision)]
    assert store.rollback(MODEL).to_key == KEY_A


def test_maintenance_keeps_the_serving_version_the_previous_one_candidates_and_their_indexes(half_finished_rollout):
    store = half_finished_rollout
    C = bumped(A, revision="c" * 40)
    key_c = version_key(C.revision, PARAMS.params_hash)
    for snapshot in (B, C):
        for partition in ("p1", "p2"):
            write(store, partition, snapshot)
    indexes = {key: store.build_vector_indexes(MODEL, version=key)[0].record for key in (KEY_A, KEY_B, key_c)}
    store.promote(MODEL, KEY_B)
    store.promote(MODEL, key_c)  # A served two promotions ago: retired
    candidate = EmbeddingParams(normalize_embeddings=True)
    write(store, "p1", A, candidate)  # a candidate, never promoted
    key_candidate = version_key(A.revision, candidate.params_hash)

    retired = sorted(v.version_id for v in store.embedding_versions() if v.revision == A.revision
                     and v.params_hash == PARAMS.params_hash)

    report = store.maintain(older_than=timedelta(0))
    assert len(retired) == 2 and sorted(report.expired_embedding_versions) == retired
    assert {s.key: (s.serving, s.previous) for s in store.version_sets()} == {
        KEY_B: (False, True), key_c: (True, False), key_candidate: (False, False)}
    assert report.deleted_index_files == 2  # A's index and its rows
    assert not os.path.exists(store.uri(indexes[KEY_A].path))
    for key in (KEY_B, key_c):
        assert os.path.exists(store.uri(indexes[key].path)) and os.path.exists(store.uri(indexes[key].rows_path))
    assert {r.index_id for r in store.vector_indexes()} == {indexes[KEY_B].index_id, indexes[key_c].index_id}
    # The rollback target is whole: its vectors and its index answer at once.
    store.rollback(MODEL)
    searcher = store.searcher(MODEL)
    assert searcher.loaded.record.index_id == indexes[KEY_B].index_id
    assert searcher.search(encoder(B).vector(texts("p2")[1]), 1)[0].id == "p21"


def test_maintenance_pins_the_first_version_set_before_expiring_its_oldest_versions(tmp_path):
    """A model never promoted serves its first set; expiring that set's first versions must
    not hand the serving role to a candidate stored after them."""
    store = EmbeddingStore(tmp_path / "store")
    write(store, "p1", A)
    write(store, "p1", B)  # a candidate
    store.write_corpus("p1", corpus_table(["p10"], [texts("p1")[0]]))  # the file changed
    write(store, "p1", A)
    assert store.version_set(KEY_B).complete is False
    report = store.maintain(older_than=timedelta(0))
    assert len(report.expired_embedding_versions) == 1  # A's version of the old file
    assert store.serving_version(MODEL).key == KEY_A
    (pin,) = store.promotions(MODEL)
    assert (pin.from_key, pin.to_key, pin.reason) == (None, KEY_A, "maintenance: the first version set serves "
                                                                   "until another is promoted")
    assert served(store) == [("p1", A.revision)]


def to_older_code(store: EmbeddingStore) -> None:
    """Back to what schema version 3 made: no promotions table, the latest version of each
    partition (and dtype) current, whatever its revision."""
    with store._catalog.connection(read_only=False) as con:
        for view in ("embedding_version_sets", "all_version_embeddings", "current_embedding_versions",
                     "serving_version_sets", "latest_embedding_versions"):
            con.execute(f"DROP VIEW {view}")
        con.execute("DROP TABLE promotions")
        con.execute("""CREATE VIEW current_embedding_versions AS
            SELECT s.* FROM stored_embedding_versions s SEMI JOIN (
                SELECT version_id FROM embedding_versions QUALIFY row_number() OVER (
                    PARTITION BY partition, model, dtype ORDER BY snapshot_id DESC, rowid DESC) = 1
            ) c ON c.version_id = s.version_id""")
        con.execute("CREATE OR REPLACE VIEW store_schema AS SELECT 3 AS version")


@pytest.mark.parametrize(("rolled_out", "serves"), [(["p1", "p2"], B), (["p1"], A)])
def test_a_store_of_older_code_serves_the_version_set_it_served(tmp_path, rolled_out, serves):
    """Migrated on open: a finished rollout keeps serving the new revision it showed; a
    half-finished one, which showed a mix, serves the complete old one."""
    store = EmbeddingStore(tmp_path / "store")
    for snapshot, partitions in ((A, ["p1", "p2"]), (B, rolled_out)):
        for partition in partitions:
            write(store, partition, snapshot)
    to_older_code(store)
    with store.connect() as con:
        shown = sorted({r for (r,) in con.execute("SELECT revision FROM embeddings").fetchall()})
    assert shown == sorted({B.revision} | ({A.revision} if len(rolled_out) == 1 else set()))
    commits = len(store.lake_snapshots())

    reopened = EmbeddingStore(store.root)
    assert [s.message for s in reopened.lake_snapshots()[commits:]] == [f"store views version {SCHEMA_VERSION}"]
    with reopened.connect() as con:  # promotion records stay in the catalog database, like the others
        assert con.execute("SELECT value FROM ducklake_options(current_database()) WHERE option_name = "
                           "'data_inlining_row_limit' AND scope_entry = 'main.promotions'").fetchall() == [("1000",)]
    assert served(reopened) == [("p1", serves.revision), ("p2", serves.revision)]
    (pin,) = reopened.promotions()
    key = version_key(serves.revision, PARAMS.params_hash)
    assert (pin.model, pin.from_key, pin.to_key, pin.reason) == (
        MODEL, None, key, f"store schema version {SCHEMA_VERSION}: the version set older code served")
    with pytest.raises(VersionError, match="no previous serving version"):
        reopened.rollback(MODEL)
    # It works on as a new store: the other set is a candidate, promotable when complete.
    other = KEY_A if serves is B else KEY_B
    write(reopened, "p2", B)
    reopened.promote(MODEL, other)
    assert reopened.serving_version(MODEL).key == other
    EmbeddingStore(store.root)
    assert len(reopened.promotions()) == 2  # migrated once
