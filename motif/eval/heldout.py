"""Held-out bits per byte per language: what a stage's user watches for forgetting.

Why it is built this way:

* **Bits per byte, not loss per token.** `sum(-log2 p(token)) / utf8_bytes(text)` does not depend
  on the tokenizer, so stages, proxies and checkpoints with other tokenizers stay comparable
  (lm-eval's `bits_per_byte` for perplexity tasks is the same quantity).
* **Windows as lm-eval's rolling log-likelihood makes them.** Each document is `[bos] + ids`; the
  first window predicts up to `seq_len` tokens after BOS, each later one the next `seq_len` (fewer
  at the end) with a full `seq_len` of input before them. Every token of the text is predicted
  exactly once, BOS and EOS never.
* **Collective-safe.** Under FSDP or ZeRO-3 a forward pass is a collective: every rank must call
  it equally often. Every rank builds the same window list, takes every `world`-th window, and
  runs the same number of batches, padding its share with a dummy batch whose tokens count
  nowhere. Per-language sums of bits are all-reduced once at the end; byte counts are known to
  every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from motif.config import DataSource, HeldoutSource, StageConfig
from motif.errors import DataError

Forward = Callable[[torch.Tensor], torch.Tensor]
AllReduceSum = Callable[[torch.Tensor], None]


@dataclass
class Window:
    language: int  # index into HeldoutSet.languages
    tokens: list[int]  # model input
    targets: list[int]  # the next token at each input position
    scored_from: int = 0  # positions before this are context only (already predicted by an earlier window)


@dataclass
class HeldoutSet:
    """Held-out texts, tokenized into windows; `score` returns bits per byte per language."""

    languages: list[str]
    windows: list[Window]  # all windows, the same list on every rank
    bytes_per_language: list[int]
    seq_len: int
    batch_size: int
    rank: int = 0
    world: int = 1

    @classmethod
    def from_stage(cls, stage: StageConfig, tokenizer, rank: int = 0, world: int = 1) -> HeldoutSet | None:
        """The held-out sets of `motif.eval.heldout`, or None when the stage has none.

        Args:
            tokenizer: a `motif.data.tokenizer.Tokenizer`, or the path of a tokenizer directory.
            rank, world: this process's share of the windows.
        """
        if stage.eval is None or not stage.eval.heldout:
            return None
        return cls.from_sources(
            stage.eval.heldout, tokenizer, stage.data.seq_len, stage.train.micro_batch_size, rank, world
        )

    @classmethod
    def from_sources(
        cls,
        sources: list[HeldoutSource],
        tokenizer,
        seq_len: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
    ) -> HeldoutSet:
        from motif.data.tokenizer import Tokenizer

        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer(tokenizer)
        languages = list(dict.fromkeys(s.language for s in sources))
        windows: list[Window] = []
        nbytes = [0] * len(languages)
        for src in sources:
            lang = languages.index(src.language)
            texts = [t for t in read_texts(src) if t]
            if not texts:
                raise DataError(f"{src.path}: held-out source {src.name!r} has no non-empty text")
            # The first input is BOS (EOS for a tokenizer without one, as lm-eval's prefix token):
            # every token of the text is then predicted, and EOS, no byte of the text, is not.
            prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
            head = 1 if tokenizer.bos_id is not None else 0
            for text, ids in zip(texts, tokenizer.encode_batch(texts), strict=True):
                nbytes[lang] += len(text.encode("utf-8"))
                windows.extend(split_windows([prefix, *ids[head:-1]], seq_len, lang))
        return cls(languages, windows, nbytes, seq_len, batch_size, rank, world)

    # ---- scoring ------------------------------------------------------------------------------

    @property
    def my_windows(self) -> list[Window]:
        return self.windows[self.rank :: self.world]

    @property
    def batches_per_rank(self) -> int:
        """Forward calls every rank makes in `score` (the same on all ranks)."""
        most = math.ceil(len(self.windows) / self.world)
        return math.ceil(most / self.batch_size)

    @torch.no_grad()
    def score(
        self, forward: Forward, device: torch.device | str, all_reduce_sum: AllReduceSum, progress: bool = False
    ) -> dict[str, float]:
        """Bits per byte per language over all ranks' windows.

        Args:
            forward: tokens[B, T] -> logits[B, T, V]; collective under sharded engines (called
                `batches_per_rank` times on every rank).
            device: where the token batches go.
            all_reduce_sum: sums a tensor across ranks in place (identity for one process).
            progress: a progress bar over the batches (on stderr).
        """
        from tqdm import tqdm

        bits = torch.zeros(len(self.languages), dtype=torch.float64, device=device)
        mine = self.my_windows
        for b in tqdm(range(self.batches_per_rank), desc="held-out", disable=not progress, leave=False):
            chunk = mine[b * self.batch_size : (b + 1) * self.batch_size]
            tokens, targets, weight, lang = self._batch(chunk, device)
            logits = forward(tokens)
            nll = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), reduction="none"
            ).view_as(targets)
            per_window = (nll.double() * weight).sum(dim=1) / math.log(2)
            bits.index_add_(0, lang, per_window)
        all_reduce_sum(bits)
        total = bits.tolist()
        return {lang: total[i] / self.bytes_per_language[i] for i, lang in enumerate(self.languages)}

    def _batch(self, chunk: list[Window], device) -> tuple[torch.Tensor, ...]:
        """Right-padded tokens, targets, a 0/1 weight per position, and each row's language."""
        rows = max(len(chunk), 1)  # an empty share still runs one (dummy) row per batch
        width = max((len(w.tokens) for w in chunk), default=1)
        tokens = torch.zeros(rows, width, dtype=torch.long)
        targets = torch.zeros(rows, width, dtype=torch.long)
        weight = torch.zeros(rows, width, dtype=torch.float64)
        lang = torch.zeros(rows, dtype=torch.long)
        for r, w in enumerate(chunk):
            n = len(w.tokens)
            tokens[r, :n] = torch.tensor(w.tokens)
            targets[r, :n] = torch.tensor(w.targets)
            weight[r, w.scored_from : n] = 1.0
            lang[r] = w.language
        return tokens.to(device), targets.to(device), weight.to(device), lang.to(device)


def split_windows(ids: list[int], seq_len: int, language: int) -> list[Window]:
    """Windows that predict every token after `ids[0]` (the prefix token) exactly once.

    lm-eval's rolling windows: the first predicts up to `seq_len` tokens from the prefix on; each
    later one predicts the next `seq_len` (fewer at the end) with a full `seq_len` of input, the
    tokens before them as context.
    """
    n = len(ids) - 1  # tokens to predict
    if n <= 0:
        return []
    end = min(seq_len, n)
    windows = [Window(language, ids[:end], ids[1 : end + 1])]
    while end < n:
        k = min(n - end, seq_len)
        start = max(0, end + k - seq_len)
        tokens = ids[start : end + k]
        windows.append(Window(language, tokens, ids[start + 1 : end + k + 1], len(tokens) - k))
        end += k
    return windows


def read_texts(src: HeldoutSource) -> list[str]:
    """Every text of a held-out source, through the same reader as the training sources."""
    from motif.data.sources import open_source

    docs = open_source(
        DataSource(src.name, src.language, 1.0, path=src.path, text_field=src.text_field), streaming=False
    )
    return docs.texts(list(range(len(docs))))
