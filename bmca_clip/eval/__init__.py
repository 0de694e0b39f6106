"""Evaluation harness: tasks declared as YAML, one evaluate function per task type."""
