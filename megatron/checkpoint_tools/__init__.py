"""Offline checkpoint tools: resharding between parallel layouts and Hugging Face conversion."""
