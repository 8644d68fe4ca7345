"""Evaluation: top-1 and loss of a model on labelled data, in the model's own precision
(``evaluate``); latency in onnxruntime, models side by side (``latency``)."""
