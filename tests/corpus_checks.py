"""Assertions shared by the data tests."""

import numpy as np


def assert_same_corpus(a, b) -> None:
    """Same feature names, videos (ids, splits, order), features, frame times and label tracks, value for value."""
    assert a.feature_names == b.feature_names
    assert [(v.video_id, v.split) for v in a.videos] == [(v.video_id, v.split) for v in b.videos]
    for va, vb in zip(a.videos, b.videos, strict=True):
        np.testing.assert_array_equal(va.features, vb.features)
        np.testing.assert_array_equal(va.time_s, vb.time_s)
        for dimension in ("arousal", "valence"):
            la, lb = va.labels(dimension), vb.labels(dimension)
            assert (la is None) == (lb is None)
            if la is not None:
                np.testing.assert_array_equal(la, lb)
