"""Text corpora and fixed-length token sets for activation passes.

A token set is ``n_seq`` contexts of ``ctx_len`` tokens. Every context starts with the model's
BOS token (for the embedded model id 0, ``<|endoftext|>``, never ``<|im_start|>``); documents
are drawn in a seeded order, tokenized without special tokens, joined with the BOS id as a
separator and cut into ``ctx_len - 1`` windows. Position 0 (the BOS) is left out of every
average downstream.

Corpora:

- ``sae-probes`` (default, offline): the long-text files shipped in the ``sae-probes`` package
  (news, fake news, human and GPT-2 text, ETHICS scenarios, Yelp reviews, Wikidata biographies,
  Python code, clinical abstracts), deduplicated. Documents are split by a hash of their text:
  10% are ``eval`` (what ``saebench run`` measures on), 90% ``train`` (what our reference SAEs
  are trained on), so evaluation never sees training text.
- ``hf:NAME[:CONFIG[:SPLIT]]`` with hub access: a ``datasets`` text dataset, streamed.
- a local ``.txt`` (one document per line), ``.jsonl`` or ``.parquet`` file with a ``text``
  column: read through ``datasets`` too (the same code path as the hub).
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saebench.errors import SaebenchError

SAE_PROBES_FILES = (
    "161_agnews_0",
    "100_news_fake",
    "94_ai_gen",
    "48_cm_correct",
    "111_yelp_data",
    "57_wikidatais_alive",
    "159_code_Python",
    "101_disease_class",
)
MAX_DOC_CHARS = 4000


@dataclass
class TokenSet:
    """``tokens`` is ``[n_seq, ctx_len]`` int64; ``meta`` goes into every result's config.

    ``doc_ids`` (one per context, or None for token sets built elsewhere): a content hash of the
    source document that contributes most of the context's tokens. Contexts are cut from
    concatenated documents, so contexts of one document are not independent samples: intervals
    over contexts resample whole documents (:mod:`saebench.stats`, cluster level ``document``).
    """

    tokens: torch.Tensor
    corpus: str
    split: str
    seed: int
    doc_ids: list[str] | None = None

    @property
    def ctx_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.numel())

    def fingerprint(self) -> str:
        """Content hash of the token ids: the key of every activation cache built on them."""
        return hashlib.sha256(self.tokens.numpy().tobytes()).hexdigest()[:16]

    def seq_ids(self) -> list[str]:
        """One content hash per context: the sample id of a context in bootstrap intervals, so two
        results pair their contexts exactly when they saw the same token ids."""
        rows = self.tokens.numpy()
        return [hashlib.sha256(r.tobytes()).hexdigest()[:12] for r in rows]

    def meta(self) -> dict[str, Any]:
        out = {
            "corpus": self.corpus,
            "split": self.split,
            "seed": self.seed,
            "n_tokens": self.n_tokens,
            "n_seq": int(self.tokens.shape[0]),
            "ctx_len": self.ctx_len,
            "tokens_sha": self.fingerprint(),
        }
        if self.doc_ids is not None:
            out["n_docs"] = len(set(self.doc_ids))
        return out


def sae_probes_data_dir() -> Path:
    spec = importlib.util.find_spec("sae_probes")
    if spec is None or not spec.submodule_search_locations:
        raise SaebenchError("the offline corpus needs the sae-probes package; pip install sae-probes")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "cleaned_data"


def in_split(text: str, split: str) -> bool:
    """True when a corpus document belongs to ``split`` (``eval``: 10% by a hash of its text; else ``train``)."""
    bucket = int(hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:8], 16) % 10
    return (bucket == 0) == (split == "eval")


_in_split = in_split  # the former private name (tests/test_data.py)


def _sae_probes_docs(split: str, seed: int) -> list[str]:
    import pandas as pd

    folder = sae_probes_data_dir()
    docs: set[str] = set()
    for stem in SAE_PROBES_FILES:
        path = folder / f"{stem}.csv.zst"
        if not path.is_file():
            raise SaebenchError(f"corpus file {path} is missing; reinstall sae-probes")
        for text in pd.read_csv(path, usecols=["prompt"])["prompt"].dropna().astype(str):
            text = text.strip()[:MAX_DOC_CHARS]
            if text and in_split(text, split):
                docs.add(text)
    ordered = sorted(docs)
    random.Random(seed).shuffle(ordered)
    return ordered


def _datasets_docs(corpus: str, seed: int) -> Iterator[str]:
    """Documents from a hub dataset (``hf:...``) or a local file, through ``datasets``."""
    try:
        import datasets
    except ImportError as exc:
        raise SaebenchError("corpora other than sae-probes need the datasets package; pip install datasets") from exc
    if corpus.startswith("hf:"):
        parts = corpus[3:].split(":")
        name, config = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None)
        split = parts[2] if len(parts) > 2 else "train"
        try:
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
        except Exception as exc:
            raise SaebenchError(
                f"cannot load hub dataset {name!r} ({type(exc).__name__}); check the name and network, or use "
                "--corpus sae-probes offline"
            ) from exc
        ds = ds.shuffle(seed=seed, buffer_size=10_000)
    else:
        path = Path(corpus)
        if not path.is_file():
            raise SaebenchError(
                f"corpus {corpus!r} is neither 'sae-probes', hf:NAME[:CONFIG[:SPLIT]] nor an existing file"
            )
        kind = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise SaebenchError(f"corpus file {corpus!r}: use .txt (one document per line), .jsonl or .parquet")
        check_local_corpus(path, kind)
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train").shuffle(seed=seed)
        except Exception as exc:  # datasets wraps every parse failure (DatasetGenerationError, ArrowInvalid, ...)
            cause = exc.__cause__ or exc.__context__ or exc
            detail = str(cause).splitlines()[0][:120] if str(cause) else type(cause).__name__
            raise SaebenchError(
                f"corpus file {corpus!r} could not be read as {kind} ({type(cause).__name__}: {detail}); "
                + FIX_CORPUS[kind]
            ) from exc
    for row in ds:
        text = row.get("text")
        if text is None and "text" not in row:
            raise SaebenchError(
                f"corpus {corpus!r} has no 'text' column (columns: {', '.join(row)}); rename the column holding the "
                "documents to 'text'"
            )
        if not isinstance(text, str):
            if text is None:
                continue
            raise SaebenchError(
                f"corpus {corpus!r}: column 'text' holds {type(text).__name__} values, not strings; store the "
                "documents as text"
            )
        if text.strip():
            yield text.strip()[:MAX_DOC_CHARS]


#: how to fix a local corpus file that does not parse, by kind
FIX_CORPUS = {
    "text": "give a UTF-8 text file with one document per line",
    "json": 'give JSON lines, one object per line with a "text" field',
    "parquet": "give a parquet file with a string column 'text'",
}


def check_corpus(corpus: str) -> None:
    """Refuse a ``--corpus`` that cannot work before any model loads: a local file that does not
    exist, has an unknown suffix or cannot hold documents (``sae-probes`` and ``hf:`` corpora are
    checked when read)."""
    if corpus == "sae-probes" or corpus.startswith("hf:"):
        return
    path = Path(corpus)
    if not path.is_file():
        raise SaebenchError(f"corpus {corpus!r} is neither 'sae-probes', hf:NAME[:CONFIG[:SPLIT]] nor an existing file")
    kind = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
    if kind is None:
        raise SaebenchError(f"corpus file {corpus!r}: use .txt (one document per line), .jsonl or .parquet")
    check_local_corpus(path, kind)


def check_local_corpus(path: Path, kind: str) -> None:
    """Refuse, in one line, a local corpus file that cannot hold documents: empty, binary (NUL bytes
    in its first 64 KiB), text or JSON that is not UTF-8, or a parquet file without a ``text``
    column, before ``datasets`` turns it into a cache and a multi-line traceback."""
    size = path.stat().st_size
    if size == 0:
        raise SaebenchError(f"corpus file {str(path)!r} is empty; {FIX_CORPUS[kind]}")
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
        except Exception as exc:  # noqa: BLE001 - any unreadable parquet is the same user error
            raise SaebenchError(
                f"corpus file {str(path)!r} is not a readable parquet file ({type(exc).__name__}); {FIX_CORPUS[kind]}"
            ) from exc
        if "text" not in names:
            raise SaebenchError(
                f"corpus file {str(path)!r} has no 'text' column (columns: {', '.join(names[:10])}); rename the column "
                "holding the documents to 'text'"
            )
        return
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if b"\x00" in head:
        raise SaebenchError(
            f"corpus file {str(path)!r} looks binary (it holds NUL bytes), not text; {FIX_CORPUS[kind]}"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            for _ in iter(lambda: fh.read(1 << 20), ""):
                pass
    except UnicodeDecodeError as exc:
        raise SaebenchError(
            f"corpus file {str(path)!r} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} cannot be decoded); convert "
            f"it, e.g. `iconv -f latin1 -t utf-8`, or {FIX_CORPUS[kind]}"
        ) from exc


def build_token_set(
    tokenize: Any, bos_id: int, n_tokens: int, ctx_len: int, seed: int, corpus: str = "sae-probes", split: str = "eval"
) -> TokenSet:
    """Seeded contexts of ``ctx_len`` tokens (BOS first) totalling at least ``n_tokens``.

    ``tokenize`` maps a string to token ids without special tokens. Each context's ``doc_ids``
    entry names the document holding most of its tokens (a separator counts with the document
    it ends; ties go to the earlier document).
    """
    if ctx_len < 2:
        raise SaebenchError(f"--ctx-len {ctx_len} is too short; use at least 2 (BOS + one token)")
    n_seq = max(1, -(-n_tokens // ctx_len))
    need = n_seq * (ctx_len - 1)
    docs: Iterator[str] | list[str]
    docs = _sae_probes_docs(split, seed) if corpus == "sae-probes" else _datasets_docs(corpus, seed)
    stream: list[int] = []
    owner: list[int] = []  # index into doc_hashes of every stream token
    doc_hashes: list[str] = []
    for doc in docs:
        ids = tokenize(doc)
        stream.extend(ids)
        stream.append(bos_id)
        owner.extend([len(doc_hashes)] * (len(ids) + 1))
        doc_hashes.append(hashlib.sha256(doc.encode("utf-8", "replace")).hexdigest()[:12])
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise SaebenchError(
            f"corpus {corpus!r} ({split}) has only {len(stream)} tokens, fewer than the "
            f"{need} requested; lower --tokens"
        )
    body = torch.tensor(stream[:need], dtype=torch.long).view(n_seq, ctx_len - 1)
    bos = torch.full((n_seq, 1), bos_id, dtype=torch.long)
    rows = torch.tensor(owner[:need], dtype=torch.long).view(n_seq, ctx_len - 1)
    majority = [int(torch.bincount(r - r.min()).argmax()) + int(r.min()) for r in rows]
    return TokenSet(
        torch.cat([bos, body], dim=1),
        corpus,
        split if corpus == "sae-probes" else "-",
        seed,
        doc_ids=[doc_hashes[i] for i in majority],
    )
