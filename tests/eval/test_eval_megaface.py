"""MegaFace scoring rules on tiny hand-computable cases (protocol: docs/megaface.md)."""
import numpy as np
import pytest

from facerec.eval.megaface import evaluate, quantize_curve


def _ang(*degrees):
    """2-D unit vectors at the given angles: the score of two of them is cos(angle difference)."""
    r = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(r), np.sin(r)], 1).astype(np.float32)


def test_every_ordered_pair_is_a_trial_and_ranks_count_strictly_greater():
    probes = _ang(0, 30, 90, 100, 110)  # identity a: 0, 30; identity b: 90, 100, 110
    ids = ["a", "a", "b", "b", "b"]
    distractors = _ang(20, 200)
    r = evaluate(probes, ids, distractors, far_targets=())
    assert r["num_trials"] == 2 * 1 + 3 * 2  # sum n(n-1)
    # (0->30): d20 above (cos20 > cos30); (30->0): d20 above (cos10 > cos30): ranks 1, 1
    # identity b: d20 vs 90/100/110 is 70..90 degrees away, never above a mate (<= 20 degrees): ranks 0 x 6
    assert r["rank1"] == pytest.approx(6 / 8)
    assert r["rank_histogram"] == {"rank": [0, 1], "trials": [6, 2]}
    assert r["cmc"]["5"] == 1.0


def test_ties_go_to_the_mate():
    probes = _ang(0, 30)
    distractors = _ang(30, 200)  # d0 is an exact copy of the mate at 30 degrees
    r = evaluate(probes, ["a", "a"], distractors)
    # probe 0 / mate 30: d0 ties the mate -> not counted, rank 0; probe 30 / mate 0: d0 scores 1 > cos30 -> rank 1
    assert r["rank_histogram"] == {"rank": [0, 1], "trials": [1, 1]}
    assert r["rank1"] == 0.5
    # with many tiny blocks the tie is still a tie (one fixed GEMM shape for every score)
    many = np.concatenate([_ang(*np.linspace(150, 250, 37)), distractors, _ang(*np.linspace(260, 300, 20))])
    r2 = evaluate(probes, ["a", "a"], many, block_size=8)
    assert r2["rank_histogram"] == {"rank": [0, 1], "trials": [1, 1]}


def test_noisy_probe_replaced_by_identity_centre():
    probes = _ang(0, 60, 180)  # image 2 is noise (far from its identity)
    distractors = _ang(10, -50)
    noisy = np.array([False, False, True])
    plain = evaluate(probes, ["a"] * 3, distractors)
    clean = evaluate(probes, ["a"] * 3, distractors, probe_noise=noisy)
    assert clean["num_trials"] == plain["num_trials"] == 6  # the image stays a probe and a mate
    assert clean["num_probes_replaced"] == 1
    # after replacement image 2 sits at 30 degrees (normalised mean of 0 and 60)
    # trials (probe->mate, distractors at 10 and -50 degrees): 0->60: both (10, 50 deg < 60) = 2;
    # 0->30: d10 = 1; 60->0: d10 (50 deg < 60) = 1; 60->30: none = 0; 30->0: d10 (20 deg) = 1; 30->60: d10 = 1
    assert clean["rank_histogram"] == {"rank": [0, 1, 2], "trials": [1, 4, 1]}
    # before: image 2 at 180 degrees; 180->x: d(-50) is 130 deg away, d10 170: mates 0 (180 deg), 60 (120 deg)
    assert plain["rank_histogram"]["trials"] != clean["rank_histogram"]["trials"]


def test_noisy_distractors_score_minus_infinity_but_stay_counted():
    probes = _ang(0, 40)
    distractors = _ang(0, 5, 200)  # d0 and d1 sit on probe 0
    noise = np.array([True, False, False])
    r = evaluate(probes, ["a", "a"], distractors, distractor_noise=noise)
    # probe 0 / mate 40: only d5 counts (d0 is at -inf) -> rank 1; probe 40 / mate 0: d5 (35 deg) -> rank 1
    assert r["rank_histogram"] == {"rank": [1], "trials": [2]}
    assert r["num_distractors"] == 3 and r["num_distractors_removed"] == 1
    assert r["roc_negatives"] == 2 * 3  # noisy distractors remain negatives (at -inf)
    assert r["cmc_curve"]["rank"][-1] == 3


def _one_hot_probes(n_ids):
    """Identity k: images e_k and normalise(e_k + 0.1 e_last); same-identity score 1/sqrt(1.01)."""
    d = n_ids + 1
    feats = []
    for k in range(n_ids):
        u = np.zeros(d, np.float32)
        u[k] = 1
        v = u.copy()
        v[-1] = 0.1
        feats += [u, v / np.linalg.norm(v)]
    return np.stack(feats), [f"id{k}" for k in range(n_ids) for _ in range(2)]


def test_roc_negatives_come_from_the_first_100_probe_images_only():
    probes, ids = _one_hot_probes(51)  # 102 probe images; images 100, 101 are identity 50
    d = probes.shape[1]
    outside = np.zeros((2, d), np.float32)
    outside[0, 50] = 1  # a copy of probe image 100: beats every positive, but only for probe 100
    outside[1, [0, 1]] = 0.5 ** 0.5  # cos 0.707 with probes 0..3: below the positive score 0.995
    r = evaluate(probes, ids, outside, far_targets=(0.001, 0.005))
    assert r["roc_probe_images"] == 100 and r["roc_negatives"] == 200 and r["roc_positives"] == 51
    assert r["tar_at_far_false_accepts"] == {"1e-03": 0, "5e-03": 1}
    assert r["tar_at_far"]["1e-03"] == 1.0  # no negative of the first 100 images beats a positive
    inside = outside.copy()
    inside[0] = 0
    inside[0, 0] = 1  # a copy of probe image 0: one negative (probe 0 x d0) above every positive
    r = evaluate(probes, ids, inside, far_targets=(0.001, 0.005))
    assert r["tar_at_far"] == {"1e-03": 0.0, "5e-03": 1.0}


def test_fewer_than_100_probes_still_work_and_are_labelled():
    probes = _ang(0, 10, 90, 95)
    r = evaluate(probes, ["a", "a", "b", "b"], _ang(45, 300))
    assert r["roc_probe_images"] == 4 and r["roc_negatives"] == 8
    assert "only 4 probe-list images" in r["roc_note"]
    assert r["rank1"] == 1.0 and r["tar_at_far"]["1e-06"] == 1.0


def test_one_block_equals_many_blocks_random():
    rng = np.random.default_rng(3)
    probes = rng.standard_normal((23, 16)).astype(np.float32)
    ids = list(np.repeat(np.arange(6), [5, 4, 3, 6, 3, 2]).astype(str))
    distractors = rng.standard_normal((301, 16)).astype(np.float32)
    distractors[7] = probes[2]  # exact ties
    distractors[250] = probes[11]
    noise = np.zeros(301, bool)
    noise[[3, 99]] = True
    a = evaluate(probes, ids, distractors, distractor_noise=noise, block_size=4096)
    b = evaluate(probes, ids, distractors, distractor_noise=noise, block_size=13, roc_bins=64)
    for key in ("rank1", "cmc", "tar_at_far", "cmc_curve", "roc_curve", "rank_histogram", "num_trials"):
        assert a[key] == b[key], key
    # brute force reference
    pn = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    dn = distractors / np.linalg.norm(distractors, axis=1, keepdims=True)
    s, pp = (pn @ dn.T)[:, ~noise], pn @ pn.T
    ranks = [(s[i] > pp[i, j]).sum() for i in range(23) for j in range(23) if i != j and ids[i] == ids[j]]
    assert a["rank1"] == pytest.approx(np.mean(np.array(ranks) == 0))
    assert a["cmc"]["10"] == pytest.approx(np.mean(np.array(ranks) <= 9))


def test_quantize_curve_devkit_rules():
    xs, ys = np.array([0, 1, 2, 3, 9]), np.array([0.005, 0.012, 0.02, 0.5, 0.5])
    assert quantize_curve(xs, ys) == ([0, 2, 3, 9], [0.005, 0.02, 0.5, 0.5])
    assert quantize_curve(np.array([0, 1, 2]), np.array([0.0, 0.01, 0.03]), strict=True) == ([0, 2], [0.0, 0.03])
    assert quantize_curve(np.array([0, 1, 2]), np.array([0.0, 0.01, 0.03])) == ([0, 1, 2], [0.0, 0.01, 0.03])


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="probe_ids has 1 entries"):
        evaluate(_ang(0, 1), ["a"], _ang(3))
    with pytest.raises(ValueError, match=r"distractor_feats must be \(N, 2\)"):
        evaluate(_ang(0, 1), ["a", "a"], np.zeros((3, 5), np.float32))
    bad = _ang(0, 1)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        evaluate(bad, ["a", "a"], _ang(3))
    with pytest.raises(ValueError, match="probe_noise"):
        evaluate(_ang(0, 1), ["a", "a"], _ang(3), probe_noise=[True])
