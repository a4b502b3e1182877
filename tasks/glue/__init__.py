"""GLUE sentence-pair classification data (MNLI, QQP)."""
