"""Inference and evaluation: model loading, sliding window, outputs, flip TTA, ETTA and self-training
adaptation, metrics, statistics, the evaluation engine and its command line (`test_etta.py`),
`swinbob predict` and its parts."""
