"""Evaluation: scoring a model on examples (exact match, token accuracy, generated text)."""
