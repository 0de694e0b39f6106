"""The console scripts (pyproject.toml [project.scripts]): bmca-train and bmca-eval live here; bmca-merge,
bmca-wise-ft, bmca-export and bmca-synthetic are the main() of their own modules."""
