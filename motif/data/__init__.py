"""Training data: sources (local files, hub datasets), tokenizer, packing into fixed-length sequences,
and the per-stage mixture. Every position is a small JSON-able state, so a resumed run sees exactly
the batches an uninterrupted run would have seen."""
