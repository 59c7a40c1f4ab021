"""A separate writer process for the concurrency and crash tests.

    python -m tests.store.writer_process ROOT CATALOG PARTITION DIM [options]

Embeds the partition's current corpus with `TextHashEncoder(DIM)` and prints the result as
JSON. Options shape the timing: `--commit-at` holds the encode until a wall-clock time
(so several writers commit together), `--encode-seconds` makes encoding slow, `--ready`
names a file touched when encoding starts, `--hang-in-commit` a file touched inside the
commit transaction (rows written, not committed) before the writer hangs there, and
`--busy-timeout` how long it waits for a catalog file another process holds. It logs to stderr.
"""

import argparse
import json
import logging
import time
from pathlib import Path

from embedding_core.store import EmbeddingParams, EmbeddingStore
from embedding_core.store import writer as store_writer
from tests.store.fakes import SNAPSHOT, TextHashEncoder, bumped


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("root", "catalog", "partition"):
        parser.add_argument(name)
    parser.add_argument("dim", type=int)
    parser.add_argument("--revision", default=SNAPSHOT.revision)
    parser.add_argument("--run-id")
    parser.add_argument("--commit-at", type=float)
    parser.add_argument("--encode-seconds", type=float, default=0.0)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--hang-in-commit", type=Path)
    parser.add_argument("--busy-timeout", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    store = EmbeddingStore(args.root, args.catalog, busy_timeout_s=args.busy_timeout)
    encoder = TextHashEncoder(args.dim)

    def encode(texts: list[str]):
        if args.ready:
            args.ready.touch()
        time.sleep(args.encode_seconds)
        if args.commit_at:
            time.sleep(max(0.0, args.commit_at - time.time()))
        return encoder(texts)

    if args.hang_in_commit:
        def hang(con):
            args.hang_in_commit.touch()
            time.sleep(3600)
        store_writer.ensure_embeddings_view = hang

    snapshot = bumped(revision=args.revision, dim=args.dim)
    result = store.write_embeddings(args.partition, store.corpus_version(args.partition), snapshot,
                                    EmbeddingParams(), encode, run_id=args.run_id)
    print(json.dumps({"version_id": result.version.version_id, "created": result.created,
                      "snapshot_id": result.version.snapshot_id, "finished": time.time()}))


if __name__ == "__main__":
    main()
