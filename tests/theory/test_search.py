"""The certified search: smallest first, stops at the first network every ball certifies."""

from __future__ import annotations

import numpy as np
import torch

from rotelab.theory import (
    SearchConfig,
    SeparatedData,
    architectures,
    certify,
    epsilon,
    ibp_margins,
    milp_certify,
    minimal_network,
    train_robust,
)

X = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [0.2, 0.9]])
Y = np.array([0, 1, 1, 0, 1, 0])
DATA = SeparatedData(X, Y, epsilon(X, Y))
FAST = SearchConfig(epochs=300, lr=3e-2, check_every=50, milp_time=5.0)


def test_architectures_sorted_by_parameter_count():
    archs = architectures(2, 2, [2, 8, 4], [1, 2])
    assert [a.params for a in archs] == sorted(a.params for a in archs)
    one = next(a for a in archs if a.depth == 1 and a.width == 4)
    assert one.params == 3 * 4 + 5 * 2  # (d+1) w + (w+1) C
    two = next(a for a in archs if a.depth == 2 and a.width == 2)
    assert two.params == 3 * 2 + 3 * 2 + 3 * 2


def test_search_stops_at_the_first_certified_network_and_its_certificate_holds():
    archs = architectures(2, 2, [1, 16], [1])
    rho = 0.3
    table = minimal_network(DATA, rho, archs, seed=0, config=FAST)
    assert table["certified"].iloc[-1] and not table["certified"].iloc[:-1].any()
    assert table["params"].is_monotonic_increasing
    proofs = table.iloc[-1][
        ["proved_by_ibp", "proved_by_crown", "proved_by_bab", "proved_by_milp"]
    ].sum()
    assert proofs == len(Y)  # every ball of the reported network has a proof
    # width 1 cannot fit XOR-like labels: the first row fails
    assert table.iloc[0]["width"] == 1 and not table.iloc[0]["certified"]
    # retrain the certified architecture with the same seed: every ball has a sound proof
    last = table.iloc[-1]
    arch = next(a for a in archs if a.width == last["width"])
    net = train_robust(DATA, rho * DATA.epsilon, arch, seed=0, config=FAST)
    checked = certify(net, DATA, rho * DATA.epsilon, config=FAST, stop_at_failure=False)
    assert (checked["status"] == "certified").all()
    assert set(checked["method"]) <= {"ibp", "crown", "bab", "milp"}
    for i in checked.loc[checked["method"].isin(["bab", "milp"]), "point"]:
        assert milp_certify(net, X[i], int(Y[i]), rho * DATA.epsilon).status == "certified"


def test_certify_reports_failures_and_never_certifies_by_pgd():
    torch.manual_seed(0)
    net = train_robust(DATA, 0.0, architectures(2, 2, [16], [1])[0], seed=0, config=FAST)
    big = 0.99 * DATA.epsilon * 2  # balls twice as large as allowed overlap other labels
    checked = certify(net, DATA, big, config=FAST, stop_at_failure=False)
    assert (checked["status"] != "certified").any()
    proven = checked[checked["status"] == "certified"]
    assert set(proven["method"]) <= {"ibp", "crown", "bab", "milp"}
    ibp = ibp_margins(net, X, Y, big).min(dim=1).values.numpy()
    assert (proven.loc[proven["method"] == "ibp", "margin_lower"].to_numpy() > 0).all()
    assert (ibp[proven.loc[proven["method"] == "ibp", "point"].to_numpy()] > 0).all()
