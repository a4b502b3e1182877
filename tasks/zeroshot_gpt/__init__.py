"""Zero-shot evaluation of GPT checkpoints: WikiText-103 perplexity and LAMBADA cloze accuracy."""
