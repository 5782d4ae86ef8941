"""The memory-attending reader (LUMEN-style live layers over precomputed token memories)."""
