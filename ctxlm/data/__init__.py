"""Data: the corpus and its sources, sampling and tokenizing, the pretrained tokenizer and embedding, and the files stages pass on (token and C* shards)."""
