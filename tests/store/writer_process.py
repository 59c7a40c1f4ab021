"""A separate writer process for the concurrency and crash tests.

    python -m tests.store.writer_process ROOT CATALOG PARTITION DIM [options]

Embeds the partition's current corpus with `TextHashEncoder(DIM)` and prints the result as
JSON. Options shape the timing: `--meet DIR --writers N` holds the writer at a barrier
until N writers have reached it (`--meet-in encode`: all encode at once; `--meet-in commit`:
inside the commit transaction, rows written, so N transactions are open together and their
commits genuinely conflict), `--encode-until FILE` holds encoding until the file exists
(an event of the test, not a clock), `--ready` names a file touched when encoding starts,
`--hang-in-commit` a file touched inside the commit transaction (rows written, not
committed) before the writer hangs there, and `--busy-timeout` how long it waits for a
catalog file another process holds. It logs to stderr.
"""

import argparse
import json
import logging
import os
import time
from pathlib import Path

from embedding_core.store import EmbeddingParams, EmbeddingStore
from embedding_core.store import writer as store_writer
from tests.store.fakes import SNAPSHOT, TextHashEncoder, bumped


def wait_until_exists(path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("root", "catalog", "partition"):
        parser.add_argument(name)
    parser.add_argument("dim", type=int)
    parser.add_argument("--revision", default=SNAPSHOT.revision)
    parser.add_argument("--run-id")
    parser.add_argument("--meet", type=Path)
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--meet-in", choices=["encode", "commit"], default="commit")
    parser.add_argument("--encode-until", type=Path)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--hang-in-commit", type=Path)
    parser.add_argument("--busy-timeout", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def meet() -> None:
        """Arrive at the barrier (once: a retried commit passes) and wait for the others."""
        arrived = args.meet / str(os.getpid())
        if not arrived.exists():
            arrived.touch()
        deadline = time.monotonic() + 120
        while len(list(args.meet.iterdir())) < args.writers:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(list(args.meet.iterdir()))} of {args.writers} writers met")
            time.sleep(0.05)
        logging.getLogger("writer_process").info("met %d writers in %s", args.writers, args.meet_in)

    store = EmbeddingStore(args.root, args.catalog, busy_timeout_s=args.busy_timeout)
    encoder = TextHashEncoder(args.dim)

    def encode(texts: list[str]):
        if args.ready:
            args.ready.touch()
        if args.encode_until:
            wait_until_exists(args.encode_until)
        if args.meet and args.meet_in == "encode":
            meet()
        return encoder(texts)

    if args.hang_in_commit:
        def hang(con):
            args.hang_in_commit.touch()
            time.sleep(3600)
        store_writer.ensure_embeddings_view = hang
    elif args.meet and args.meet_in == "commit":
        ensure_view = store_writer.ensure_embeddings_view

        def ensure_view_then_meet(con):
            ensure_view(con)
            meet()
        store_writer.ensure_embeddings_view = ensure_view_then_meet

    snapshot = bumped(revision=args.revision, dim=args.dim)
    result = store.write_embeddings(args.partition, store.corpus_version(args.partition), snapshot,
                                    EmbeddingParams(), encode, run_id=args.run_id)
    print(json.dumps({"version_id": result.version.version_id, "created": result.created,
                      "snapshot_id": result.version.snapshot_id, "finished": time.time()}))


if __name__ == "__main__":
    main()
