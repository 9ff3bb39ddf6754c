"""The tokenizer of a stage: an HF tokenizer directory (`tokenizer.json`, as Llama 3 ships it).

We drive the Rust `tokenizers` library directly rather than transformers' `AutoTokenizer`: it is the
same fast tokenizer, loads in milliseconds, and needs no model hub. BOS/EOS come from
`tokenizer_config.json` when the directory has one (Llama 3: `<|begin_of_text|>`, `<|end_of_text|>`).
A malformed tokenizer file or config is one DataError naming the file and the key, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from motif.errors import DataError

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"


def _token_text(config: dict[str, Any], key: str, file: Path) -> str | None:
    # tokenizer_config.json stores special tokens either as strings or as AddedToken dicts.
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise DataError(f'{file}: {key}: expected a token string or {{"content": string}}, got {config[key]!r}')
    return value or None


# Long runs of each kind of character: where a regex that backtracks without bound gives up.
PROBE = [c * 256 for c in ("a", "A", "1", " ", "\n", "!", "가", "é", "\t")] + ["ab1 !" * 64, "가a 1" * 64]


class Tokenizer:
    """Encode documents to token ids, framed as `[bos] + ids + [eos]`."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _Tok

        self.path = Path(path)
        file = self.path / "tokenizer.json" if self.path.is_dir() else self.path
        if not file.is_file():
            raise DataError(f"{self.path}: no tokenizer.json (motif.data.tokenizer must be an HF tokenizer directory)")
        try:
            self._tok = _Tok.from_file(str(file))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a bare Exception, or a Rust panic (a BaseException), on a malformed file
            raise DataError(f"{file}: cannot read tokenizer: {' '.join(str(e).split())[:300]}") from None
        config_file = file.parent / "tokenizer_config.json"
        config = _read_config(config_file)
        bos = _token_text(config, "bos_token", config_file)
        eos = _token_text(config, "eos_token", config_file)
        self.bos_id = self._id(bos or BOS)
        self.eos_id = self._id(eos or EOS)
        if bos is not None and self.bos_id is None:
            raise DataError(f"{config_file}: bos_token: {bos!r} is not in the vocabulary of {file}")
        if self.eos_id is None:
            where = f"{config_file}: eos_token: {eos!r} is not in the vocabulary of {file}" if eos else None
            raise DataError(where or f"{file}: no end-of-text token (set eos_token in tokenizer_config.json)")
        # Llama 3's base tokenizer adds BOS in its post-processor; we frame documents ourselves.
        self._tok.no_padding()
        self._tok.no_truncation()
        self._probe(file)

    def _probe(self, file: Path) -> None:
        """Encode long runs of each kind of character once, now: a pre-tokenizer regex that
        backtracks without bound makes the Rust tokenizer panic ("retry-limit-in-match over") on
        such a run, and that must be one line before the model is built, not a backtrace mid-run.
        The panic's own report (a backtrace under RUST_BACKTRACE=1) is kept off stderr."""
        problem = None
        with tempfile.TemporaryFile() as sink:
            saved = os.dup(2)
            sys.stderr.flush()
            os.dup2(sink.fileno(), 2)
            try:
                self._tok.encode_batch_fast(PROBE, add_special_tokens=False)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # a Rust panic is a BaseException (pyo3's PanicException)
                problem = " ".join(str(e).split())[:300]
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        if problem is not None:
            raise DataError(
                f"{file}: the tokenizer fails on plain text ({problem}): a pre_tokenizer or normalizer regex that "
                "backtracks without bound? (fix the tokenizer)"
            )

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, framed with BOS (if the tokenizer has one) and EOS."""
        # encode_batch_fast skips character offsets (unused here): about 2x faster.
        encodings = self._encode(texts)
        head = [] if self.bos_id is None else [self.bos_id]
        return [head + e.ids + [self.eos_id] for e in encodings]

    def encode_pieces(self, pieces: Iterable[str]) -> Iterator[tuple[list[int], bool]]:
        """Token ids of one document given in pieces, piece by piece: BOS before the first, EOS
        after the last; yields (ids, is_last). Memory: one piece at a time."""
        it = iter(pieces)
        current: str | None = next(it, "")
        first = True
        while current is not None:
            following = next(it, None)
            ids = self._encode([current])[0].ids
            if first and self.bos_id is not None:
                ids = [self.bos_id, *ids]
            last = following is None
            if last:
                ids.append(self.eos_id)
            yield ids, last
            current, first = following, False

    def _encode(self, texts: list[str]):
        try:
            return self._tok.encode_batch_fast(texts, add_special_tokens=False)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a Rust panic on text the load-time probe did not cover: one line
            raise DataError(
                f"{self.path}: the tokenizer fails on a document: {' '.join(str(e).split())[:300]}"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def _read_config(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: not valid JSON: {' '.join(str(e).split())}") from None
    if not isinstance(config, dict):
        raise DataError(f"{file}: expected a JSON object, got {type(config).__name__}")
    return config


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE tokenizer (Llama 3's kind) and write an HF tokenizer directory.

    The directory loads with both `Tokenizer` above and transformers' `AutoTokenizer`.
    """
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}, indent=2) + "\n")
    return out
