"""bmca-clip: continual pretraining of CLIP on BIOMEDICA and biomedical zero-shot evaluation."""

__version__ = "0.1.0"
