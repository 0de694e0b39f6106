"""Data: BIOMEDICA sample format, synthetic corpus, WebDataset training pipeline."""
