"""Scoring: answer-letter extraction, caption metrics, accuracy statistics and the results.md report."""
