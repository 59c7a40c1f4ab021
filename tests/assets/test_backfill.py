"""The backfill command's planning: contiguous partition ranges of at most the policy size."""

import pytest

from embedding_assets.backfill import contiguous_chunks


def test_backfill_chunks_are_contiguous_ranges_of_at_most_the_policy_size():
    keys = [f"p{i}" for i in range(20)]
    chunks = contiguous_chunks(keys, [*keys[:10], "p12", "p13", "p19"], size=4)
    assert chunks == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"], ["p8", "p9"],
                      ["p12", "p13"], ["p19"]]
    with pytest.raises(ValueError, match=r"unknown partition\(s\) \['nope'\]"):
        contiguous_chunks(keys, ["nope"], size=4)
