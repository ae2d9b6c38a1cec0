"""Models the tuner and benchmarks measure on: the packaged SmolLM2 and the long-context byte-level
fixture trained here (loading, texts split by package, training, retrieval probes)."""
