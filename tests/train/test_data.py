"""The data pipeline: deterministic, exactly resumable, disjoint per rank, weighted, language-tagged."""

import json

import numpy as np
import pytest
import torch

from motif.config import DataConfig, DataSource
from motif.data.mixture import Mixture
from motif.data.shards import ShardedData
from motif.data.sources import open_source
from motif.data.tokenizer import Tokenizer
from motif.errors import DataError
from motif.train.checkpoint import union


def config(corpus, ko=0.5, seq_len=32, seed=0) -> DataConfig:
    d = corpus / "data"
    return DataConfig(
        tokenizer=str(d / "tokenizer"),
        seq_len=seq_len,
        seed=seed,
        sources=[
            DataSource("ko", "ko", ko, path=str(d / "ko.jsonl")),
            DataSource("en", "en", round(1 - ko, 6), path=str(d / "en.jsonl")),
        ],
    )


def take(mixture: Mixture, steps: int, batch: int = 8) -> list[torch.Tensor]:
    return [mixture.next_batch(batch).tokens for _ in range(steps)]


def test_same_seed_same_batches_other_seed_other_batches(corpus):
    a = take(Mixture.from_config(config(corpus)), 5)
    b = take(Mixture.from_config(config(corpus)), 5)
    c = take(Mixture.from_config(config(corpus, seed=1)), 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("world", [1, 2])
def test_resume_gives_exactly_the_uninterrupted_batches(corpus, world):
    for rank in range(world):
        cfg = config(corpus, ko=0.9, seq_len=128)
        full = Mixture.from_config(cfg, rank=rank, world=world)
        expected = take(full, 90)
        first = Mixture.from_config(cfg, rank=rank, world=world)
        take(first, 80)
        state = json.loads(json.dumps(first.state_dict()))  # through JSON, as in a checkpoint
        resumed = Mixture.from_config(cfg, rank=rank, world=world)
        resumed.load_state_dict(state)
        rest = take(resumed, 90 - 80)
        assert all(torch.equal(x, y) for x, y in zip(expected[80:], rest, strict=True))
    assert state["sources"]["ko"]["epoch"] >= 1  # the test did cross an epoch boundary


def test_ranks_read_disjoint_documents(corpus):
    tok = Tokenizer(corpus / "data" / "tokenizer")
    src = config(corpus).sources[0]
    docs = open_source(src, streaming=False)
    from motif.data.stream import TokenStream

    orders = [TokenStream(docs, tok, seed=0, index=0, rank=r, world=2)._order(0) for r in range(2)]
    assert not set(orders[0]) & set(orders[1])
    assert sorted([*orders[0], *orders[1]]) == list(range(len(docs)))


def test_mixture_follows_the_weights(corpus):
    m = Mixture.from_config(config(corpus, ko=0.2))
    sources = torch.cat([m.next_batch(50).source for _ in range(40)])
    share_ko = (sources == 0).float().mean().item()
    assert share_ko == pytest.approx(0.2, abs=0.03)  # 2000 draws: 3 sigma is about 0.027


def test_sequences_are_packed_documents_framed_by_bos_and_eos(corpus):
    tok = Tokenizer(corpus / "data" / "tokenizer")
    m = Mixture.from_config(config(corpus, ko=1.0 - 1e-6, seq_len=64))
    batch = m.next_batch(8)
    assert batch.tokens.shape == (8, 65)
    assert batch.inputs.shape == batch.targets.shape == (8, 64)
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    flat = batch.tokens.flatten().tolist()
    assert flat[0] == tok.bos_id and tok.eos_id in flat  # packed: documents end inside sequences
    text = tok.decode([t for t in flat[:65] if t not in (tok.bos_id, tok.eos_id)])
    assert any("\uac00" <= ch <= "\ud7a3" for ch in text)  # Hangul: the ko source, as tagged


def test_language_accounting_counts_target_tokens(corpus):
    m = Mixture.from_config(config(corpus, ko=0.3))
    counts = {"ko": 0, "en": 0}
    for _ in range(10):
        b = m.next_batch(6)
        for s in b.source.tolist():
            counts[m.languages[s]] += b.targets.shape[1]
    assert sum(counts.values()) == 10 * 6 * 32
    assert counts["ko"] > 0 and counts["en"] > 0


def test_a_shard_position_belongs_to_its_shard_count(corpus):
    state = Mixture.from_config(config(corpus), rank=0, world=2).state_dict()
    with pytest.raises(DataError, match="saved by 2 ranks and this job has 1"):
        Mixture.from_config(config(corpus)).load_state_dict(state)


def _rows(batches) -> list[bytes]:
    return [row.numpy().tobytes() for b in batches for row in b.tokens]


@pytest.mark.parametrize(("before", "after"), [(2, 1), (4, 2), (2, 2)])
def test_resharded_data_loses_and_repeats_no_sample(corpus, before, after):
    """Shards saved by `before` ranks, read on by `after`: every shard continues where it stopped."""
    cfg, tok, shards = config(corpus), Tokenizer(corpus / "data" / "tokenizer"), 4
    first = [ShardedData.from_config(cfg, shards, rank=r, world=before, tokenizer=tok) for r in range(before)]
    drawn = _rows(b for d in first for b in (d.next_batch(4) for _ in range(3)))
    state = union([json.loads(json.dumps(d.state_dict())) for d in first])  # through JSON, as in a checkpoint
    second = [ShardedData.from_config(cfg, shards, rank=r, world=after, tokenizer=tok) for r in range(after)]
    for d in second:
        d.load_state_dict(state)
    drawn += _rows(b for d in second for b in (d.next_batch(4) for _ in range(3)))
    # What each shard yields read alone from the start, as many sequences as were drawn from it.
    expected = []
    for s in range(shards):
        alone = Mixture.from_config(cfg, rank=s, world=shards, tokenizer=tok)
        taken = sum(d.shards[s].sample for d in second if s in d.shards)
        expected += _rows([alone.next_batch(1) for _ in range(taken)])
    assert len(set(drawn)) == len(drawn)  # nothing repeated
    assert sorted(drawn) == sorted(expected)  # nothing lost: each shard's prefix, exactly


def test_more_ranks_than_data_shards_is_refused(corpus):
    tok = Tokenizer(corpus / "data" / "tokenizer")
    with pytest.raises(DataError, match="cut into 2 shards, fewer than the 3 ranks"):
        ShardedData.from_config(config(corpus), 2, rank=0, world=3, tokenizer=tok)


def test_missing_source_is_a_clear_error(corpus, tmp_path):
    cfg = config(corpus)
    cfg.sources[0].path = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="nope.jsonl: no data files"):
        Mixture.from_config(cfg)


def test_text_and_parquet_sources(corpus, tmp_path):
    import datasets

    texts = ["첫 번째 문서입니다.", "The second document.", "세 번째."]
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n")
    datasets.Dataset.from_dict({"body": texts}).to_parquet(str(tmp_path / "b.parquet"))
    for path, field in ((tmp_path / "a.txt", "text"), (tmp_path / "b.parquet", "body")):
        docs = open_source(DataSource("s", "ko", 1.0, path=str(path), text_field=field), streaming=False)
        assert sorted(docs.texts(list(range(len(docs))))) == sorted(texts)


def test_demo_corpus_is_deterministic_and_bilingual(tmp_path):
    from motif.data.corpus import documents, write_corpus

    assert documents("ko", 5, seed=3) == documents("ko", 5, seed=3)
    assert documents("en", 5, seed=3) != documents("en", 5, seed=4)
    paths = write_corpus(tmp_path, docs_per_language=10)
    rows = [json.loads(line) for line in paths["ko"].read_text().splitlines()]
    assert len(rows) == 10 and all("text" in r for r in rows)
    assert np.mean([any("\uac00" <= c <= "\ud7a3" for c in r["text"]) for r in rows]) == 1.0
