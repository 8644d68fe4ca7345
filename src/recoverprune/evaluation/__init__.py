"""Evaluation: top-1 and loss of a model on labelled data, in the model's own precision."""
