"""Synthetic RECOLA-shaped corpora: a known latent affect, features that depend on it, labels that lag it.

``generate`` / ``generate_corpus`` build a corpus in memory (model: ``affect_core.synth.generator``);
``write_corpus`` writes it in one of the input layouts of docs/data_formats.md (file layouts:
``affect_core.synth.layouts`` and docs/data_formats_synth.md). Parquet layout, in short:
ROOT/features.parquet (video_id, frameTime, one float32 column per feature, NaN = no face),
ROOT/labels.parquet (video_id, frameTime, arousal, valence; labelled videos only),
ROOT/partition.parquet (video_id, split).
"""

from affect_core.synth.generator import (
    FEATURE_SETS,
    SynthConfig,
    SyntheticCorpus,
    feature_sets,
    generate,
    generate_corpus,
    select_feature_set,
    video_ids,
)
from affect_core.synth.layouts import LAYOUTS, WriteOptions, write_corpus

__all__ = [
    "FEATURE_SETS",
    "LAYOUTS",
    "SynthConfig",
    "SyntheticCorpus",
    "feature_sets",
    "generate",
    "generate_corpus",
    "select_feature_set",
    "video_ids",
    "WriteOptions",
    "write_corpus",
]
