"""Streaming replay evaluation (evaluate.py): the evaluator module and its report."""
