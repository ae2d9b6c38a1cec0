"""Run time: a tuned profile loaded with its kernel library, each call's entry chosen and run
(serving.PbsServing), and the transformers hook."""
