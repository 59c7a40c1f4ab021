"""What counting cut texts costs next to encoding them (`embedding_core.truncation`).

For each file of the sample corpus it prints how many texts are longer than the model's
max_seq_length and the share of tokens dropped; then the time of the count (a tokenization
with no truncation and no padding, best of 3) on the whole sample corpus and on `--texts`
texts (the sample corpus repeated), beside `encode` on the sample corpus with the
pipeline's default backend ("auto": OpenVINO on CPU when installed). The encode time of
`--texts` texts is that of the sample corpus scaled by the number of texts: they are the
same texts.

    .venv/bin/python benchmarks/bench_truncation.py [--texts 25000]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import best_seconds  # noqa: E402
from embedding_assets.definitions import SAMPLE_CORPUS_DIR
from embedding_core.backends import resolve_backend
from embedding_core.hub import bundled_model_path
from embedding_core.landing import LandingFolder
from embedding_core.model import SentenceTransformer
from embedding_core.truncation import truncation_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=25_000)
    args = parser.parse_args()
    backend = resolve_backend("auto", "cpu")
    model = SentenceTransformer(bundled_model_path(), device="cpu", backend=backend)
    folder = LandingFolder(SAMPLE_CORPUS_DIR)
    sample: list[str] = []
    for key, file in folder.files().items():
        texts = folder.read(file).table.column("text").to_pylist()
        cut = truncation_report(model, texts)
        print(f"{key}: {cut.truncated_texts:,} of {cut.texts:,} texts longer than {cut.max_seq_length} "
              f"tokens ({cut.truncated_share:.1%}), {cut.dropped_token_share:.1%} of {cut.tokens:,} tokens dropped")
        sample += texts
    many = list(itertools.islice(itertools.cycle(sample), args.texts))

    count_sample = best_seconds(lambda: truncation_report(model, sample))
    count_many = best_seconds(lambda: truncation_report(model, many))
    model.encode(sample[:64])  # warm-up: the runtime's first batches
    encode_sample = best_seconds(lambda: model.encode(sample, batch_size=32), repeats=1)
    encode_many = encode_sample * len(many) / len(sample)
    print(f"\nbackend {model.backend}, max_seq_length {model.max_seq_length}")
    print(f"sample corpus, {len(sample):,} texts: count {count_sample:.3f} s, encode {encode_sample:.1f} s "
          f"({count_sample / encode_sample:.2%} of it)")
    print(f"{len(many):,} texts: count {count_many:.3f} s, encode ~{encode_many:.0f} s (scaled) "
          f"({count_many / encode_many:.2%} of it)")


if __name__ == "__main__":
    main()
