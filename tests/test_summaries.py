"""Typed summaries: what a reader relies on is declared, the rest rides along unchanged."""

from __future__ import annotations

import pytest

from rotelab.errors import RotelabError
from rotelab.summaries import ExtractionSummary, Groups, MIASummary


def test_unknown_keys_ride_along_in_place():
    d = {"model": "m", "data": "d", "dtype": "float32", "windows": 2, "extracted": 1,
         "extraction_rate": 0.5, "extraction_rate_ci": [0.1, 0.9], "mean_matched_prefix": 3.0,
         "by_group": {"kind+count": {"bio|4": {"windows": 2}}}, "elapsed_s": 1.5}  # fmt: skip
    s = ExtractionSummary.from_dict(d)
    assert s.extra == {"dtype": "float32", "elapsed_s": 1.5}
    assert s.to_dict() == d and list(s.to_dict()) == list(d)
    assert s.by_group.rows() == [{"kind": "bio", "count": "4", "windows": 2}]


def test_a_missing_required_field_is_one_line_naming_it():
    with pytest.raises(RotelabError, match="no 'n_members'") as err:
        MIASummary.from_dict({"model": "m", "n_nonmembers": 3, "attacks": {}}, where="x.json")
    assert "\n" not in str(err.value)


def test_each_summary_spells_its_joint_groups():
    mia = Groups({"kind,count": {"bio,4": {"auc": 0.6}}, "count": {"4": {"auc": 0.7}}}, ",", ",")
    assert mia.rows() == [{"kind": "bio", "count": "4", "auc": 0.6}, {"count": "4", "auc": 0.7}]
    assert mia.rows("count") == [{"count": "4", "auc": 0.7}]
