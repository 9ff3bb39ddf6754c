"""A single huge document is read and tokenised in bounded memory, and gives the tokens it would
give whole.

The document is never one Python string: its pieces (64 KB) are cut from the memory-mapped Arrow
cache and tokenised as the stream reaches them. Checked here: the pieces' tokens equal the whole
document's; a resume inside the document continues exactly; the stream's memory does not grow
with the document (measured in a fresh process, where a whole-document read and tokenisation
would cost hundreds of MB for this 24 MB document).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from motif.config import DataSource
from motif.data.corpus import documents
from motif.data.sources import LONG_TEXT_BYTES, LongText, open_source
from motif.data.stream import TokenStream
from motif.data.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _source(path: Path) -> DataSource:
    return DataSource(name="huge", language="en", weight=1.0, path=str(path))


@pytest.fixture(scope="module")
def huge(tmp_path_factory, corpus) -> tuple[Path, str]:
    """A .jsonl of three documents, the middle one ~1.5 MB (English and Korean, so multi-byte text)."""
    text = " ".join(documents("en", 3000, 3) + documents("ko", 1000, 3))
    assert len(text.encode()) > 5 * LONG_TEXT_BYTES
    path = tmp_path_factory.mktemp("huge") / "huge.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for t in ("a short one.", text, "and another short one."):
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return path, text


def test_a_huge_document_is_handed_out_in_pieces_that_tokenise_as_the_whole(huge, corpus):
    path, text = huge
    docs = open_source(_source(path), streaming=False)
    long = [d for d in docs.read([0, 1, 2]) if isinstance(d, LongText)]
    assert len(long) == 1 and long[0].nbytes == len(text.encode())
    pieces = list(long[0].pieces())
    assert "".join(pieces) == text and len(pieces) > 10
    tok = Tokenizer(corpus / "data" / "tokenizer")
    streamed = [i for ids, _ in tok.encode_pieces(pieces) for i in ids]
    assert streamed == tok.encode_batch([text])[0]


def test_the_stream_gives_the_same_tokens_as_whole_documents_and_resumes_inside_one(huge, corpus):
    path, _ = huge
    docs = open_source(_source(path), streaming=False)
    tok = Tokenizer(corpus / "data" / "tokenizer")
    stream = TokenStream(docs, tok, seed=0, index=0)
    order = stream._order(0)
    whole = np.concatenate([tok.encode_batch(docs.texts([int(i)]))[0] for i in order])
    got = np.concatenate([stream.take(4096) for _ in range(len(whole) // 4096)])
    assert np.array_equal(got, whole[: len(got)])

    first = TokenStream(docs, tok, seed=0, index=0)
    first.take(len(whole) // 3)  # stops inside the huge document
    state = first.state_dict()
    assert state["offset"] > 0
    resumed = TokenStream(docs, tok, seed=0, index=0)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert np.array_equal(resumed.take(20000), first.take(20000))


PROBE = textwrap.dedent(
    """
    import json, os, sys
    from motif.config import DataSource
    from motif.data.sources import open_source
    from motif.data.stream import TokenStream
    from motif.data.tokenizer import Tokenizer

    def rss():
        return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    docs = open_source(DataSource(name="huge", language="en", weight=1.0, path=sys.argv[1]), streaming=False)
    tok = Tokenizer(sys.argv[2])
    stream = TokenStream(docs, tok, seed=0, index=0)
    stream.take(512)
    before = rss()
    for _ in range(400):
        stream.take(513)
    print(json.dumps({"grew": rss() - before, "position": stream.state_dict()}))
    """
)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_document(tmp_path, corpus):
    text = " ".join(documents("en", 80000, 5))  # ~24 MB in one line of a .txt source
    path = tmp_path / "one-line.txt"
    path.write_text(f"first\n{text}\nlast\n", encoding="utf-8")
    open_source(_source(path), streaming=False)  # builds the Arrow cache, here
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [sys.executable, "-c", PROBE, str(path), str(corpus / "data" / "tokenizer")]
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    position = result["position"]
    assert position["offset"] > 0, "the stream did not reach inside the long document"
    assert result["grew"] < len(text) // 2, f"memory grew by {result['grew']} bytes for a {len(text)}-byte document"
