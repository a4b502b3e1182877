"""Open-retrieval QA: zero-shot retrieval accuracy of an ICT biencoder (RETRIEVER-EVAL / ICT-ZEROSHOT-NQ)."""
