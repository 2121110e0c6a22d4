"""rotelab.recsys.data: a seeded, streamable lifelong world whose long-term interests live only
early in a history; a log loader that refuses what it cannot trust in one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rotelab.errors import RotelabError
from rotelab.recsys import SyntheticSpec, SyntheticWorld, read_log, tail

WORLD = SyntheticWorld(SyntheticSpec(seed=5))


def test_history_is_the_same_in_any_chunks_and_across_instances():
    whole = WORLD.history(3, 10_000)
    for chunk in (1, 999, 4096, 65_536):
        if chunk == 1:
            parts = list(WORLD.iter_history(3, 300, chunk))
            np.testing.assert_array_equal(np.concatenate(parts), WORLD.history(3, 300))
            continue
        np.testing.assert_array_equal(np.concatenate(list(WORLD.iter_history(3, 10_000, chunk))),
                                      whole)  # fmt: skip
    np.testing.assert_array_equal(SyntheticWorld(SyntheticSpec(seed=5)).history(3, 10_000), whole)
    assert not np.array_equal(SyntheticWorld(SyntheticSpec(seed=6)).history(3, 10_000), whole)
    np.testing.assert_array_equal(tail(WORLD, 3, 10_000, 64), whole[-64:])


def _long_user(world: SyntheticWorld) -> int:
    return next(u for u in range(100) if len(world.interests(u)[1]))


def test_long_term_interests_live_only_in_the_early_history():
    u = _long_user(WORLD)
    short, long = WORLD.interests(u)
    L = 100_000
    topics = WORLD.item_topic[WORLD.history(u, L)] - 1
    in_long = np.isin(topics, long)
    early = int(WORLD.spec.early_frac * L)
    # early: about long_share of the items; later: only uniform noise (noise * |long| / topics)
    assert in_long[:early].mean() > 0.4
    late_rate = WORLD.spec.noise * len(long) / WORLD.spec.n_topics
    assert in_long[early:].mean() == pytest.approx(late_rate, rel=0.15)
    assert in_long[-64:].sum() <= 6  # the last-N window sees them at the noise rate only
    assert np.isin(topics[-1000:], short).mean() > 0.75


def test_long_term_candidates_are_clicked_like_short_term_ones():
    users = [u for u in range(400) if len(WORLD.interests(u)[1])]
    b = WORLD.batch(users, 0)
    topics = WORLD.item_topic[b.candidates] - 1
    is_long = np.array([np.isin(t, WORLD.interests(u)[1]) for u, t in zip(users, topics)])
    is_short = np.array([np.isin(t, WORLD.interests(u)[0]) for u, t in zip(users, topics)])
    other = ~is_long & ~is_short
    assert b.labels[is_long].mean() > 0.6 and b.labels[other].mean() < 0.25
    assert abs(b.labels[is_long].mean() - b.labels[is_short].mean()) < 0.1


def _write(tmp_path, text: str, name: str = "log.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_log_reads_and_splits(tmp_path):
    rows = ["user,item,timestamp,label"] + [f"u{u},i{(u * 7 + t) % 13},{t},{t % 2}"
                                            for u in range(6) for t in range(5)]  # fmt: skip
    log = read_log(_write(tmp_path, "\n".join(rows)))
    assert log.n_items == 13 and len(log.users()) == 6
    b = log.split_last(targets=1, negatives=3, seed=0, max_len=8)
    assert b.history.shape == (6, 8) and b.candidates.shape == (6, 4)
    assert (b.history[:, :4] == 0).all() and (b.history[:, 4:] > 0).all()  # left-padded
    assert (b.labels[:, 1:] == 0).all()
    parquet = tmp_path / "log.parquet"
    pd.read_csv(tmp_path / "log.csv").to_parquet(parquet)
    assert read_log(parquet).frame["item_id"].tolist() == log.frame["item_id"].tolist()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("user,item,timestamp\nu1,a,5\nu1,b,3\n", "out of order"),
        ("user,item,timestamp\n", "no rows"),
        ("", "empty"),
        ("user,item\nu1,a\n", "no column 'timestamp'"),
        ("user,item,timestamp\nu1,a,1.5\n", "integers"),
        ("user,item,timestamp,label\nu1,a,1,2\n", "0 or 1"),
        ("user,item,timestamp\nu1,a,1\nu2,b,1\nu1,c,2\n", "not contiguous"),
        ("user,item,timestamp\nu1,,1\n", "empty value"),
    ],
)
def test_bad_logs_are_one_line_errors(tmp_path, text, fragment):
    with pytest.raises(RotelabError, match=fragment) as err:
        read_log(_write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_unknown_items_are_refused_against_a_model_vocabulary(tmp_path):
    path = _write(tmp_path, "user,item,timestamp\nu1,a,1\nu1,zz,2\n")
    with pytest.raises(RotelabError, match="1 item\\(s\\) unknown.*'zz'"):
        read_log(path, vocab={"a": 1, "b": 2})
