"""Neural retrieval: block embedding stores, maximum-inner-product search, answer matching.

- ``block_store``: ``BlockData``, the id -> fp16 embedding (+ optional (start, end, doc)
  metadata) store written by the indexer, with per-rank shards merged into one store.
- ``faiss_index``: ``FaissMIPSIndex``, exact (flat) or approximate (IVF/HNSW) inner-product
  search over a store, on CPU or GPU.
- ``qa_validation``: DPR-style answer matching and top-k retrieval accuracy.

Nothing here is imported eagerly: ``faiss`` and ``torch`` load only when a module that needs
them is used, so tools that only read or merge stores start quickly and work without faiss.
"""
