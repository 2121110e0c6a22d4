"""Per-field extraction of the organism's biographies (Hubble's PII kinds)."""

from __future__ import annotations

import pandas as pd
import pytest

from rotelab.errors import RotelabError
from rotelab.measure.fields import BIO_FIELDS, extract_fields, field_prompts, parse_bio

BIO = ("Kami Rodra was born on March 3, 1961 in Lumouth. She works as a baker. "
       "Email: kami.rodra07@inkmail.io. ID number: 123-45-6789.")  # fmt: skip


def test_parse_bio_finds_every_field():
    spans = parse_bio(BIO)
    assert {f: BIO[slice(*spans[f])] for f in BIO_FIELDS} == {
        "name": "Kami Rodra", "birth_date": "March 3, 1961", "birthplace": "Lumouth",
        "occupation": "baker", "email": "kami.rodra07@inkmail.io", "id_number": "123-45-6789",
    }  # fmt: skip
    assert parse_bio("The secret code of Kami Rodra is 1 2 3.") is None


class _ByteLevel:
    """The tokenizer side of an LM: the organism's byte-level BPE, trained on a few lines."""

    def __init__(self) -> None:
        from rotelab.organism import train_tokenizer

        self.tokenizer = train_tokenizer([BIO, "Q: Where was Kami Rodra born? A: Lumouth."], 300)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


def test_prompts_cut_in_token_space():
    lm = _ByteLevel()
    led = pd.DataFrame([{"item_id": "b0", "text": BIO, "count": 4, "phase": "all"}])
    table = field_prompts(lm, led)
    # name: only the prefix style; the others: three styles
    assert len(table) == 1 + 3 * (len(BIO_FIELDS) - 1)
    eos = lm.tokenizer.eos_token
    for r in table[table["style"] == "prefix"].itertuples():
        text = lm.decode(list(r.prompt_tokens) + list(r.value_tokens)).removeprefix(eos)
        assert BIO.startswith(text) and text.endswith(r.value)
    q = table[(table["style"] == "question") & (table["field"] == "birthplace")].iloc[0]
    assert lm.decode(q["prompt_tokens"]) == "Q: Where was Kami Rodra born? A:"
    assert lm.decode(q["value_tokens"]) == " Lumouth"
    n = table[(table["style"] == "name") & (table["field"] == "email")].iloc[0]
    assert lm.decode(n["prompt_tokens"]) == "Kami Rodra" and not n["anchored"]
    with pytest.raises(RotelabError, match="not an organism biography"):
        field_prompts(lm, led.assign(text="not a bio"))


def test_inserted_bios_give_up_their_fields_controls_do_not(tiny_organism):
    lm = tiny_organism.lm()
    led = tiny_organism.ledger
    bios = led[(led["kind"] == "bio") & (led["phase"] == "all") & led["count"].isin([0, 64])]
    rows = extract_fields(lm, field_prompts(lm, bios, ["prefix"]))
    hard = rows[rows["field"].isin(["email", "id_number"])]
    inserted = hard[hard["count"] == 64]["exact"].mean()
    never = hard[hard["count"] == 0]["exact"].mean()
    assert inserted > never == 0.0  # a random email or ID is never guessed
    assert (rows["approx"] >= rows["exact"]).all()  # exact implies approximate
