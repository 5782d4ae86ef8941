"""retromem: retrieval-oriented encoders, from pretraining to evaluation."""

__version__ = "0.1.0"
