"""Data: BIOMEDICA's sample format, the training stream and loader, and a synthetic corpus.

Bottom up (tests/unit/data/test_layout.py holds the layers): biomedica, counters, auth, decode, mixing ->
predicates, filters (config), http (retrying reads), transforms, health -> hub (listing), shards (file,
cache or HTTP) -> sources (what to read) -> stream (one stream's samples) -> loader (batches, workers,
resume state). synthetic writes the synthetic corpus (synthetic_figures, synthetic_corpus, synthetic_eval).
"""
