"""Refitting the score head on frozen features: the objective scores as the scorer does, the
head learns an order its start ignores, and the installed card drops what no longer holds."""

import json
import shutil

import numpy as np
import pytest

from tomoqc.errors import InputError
from tomoqc.metrics.stats import srocc
from tomoqc.train.score_head import PatchFeatures, head_scores, head_weights, refit_score_head
from tomoqc.train.series_refine import OrderedSeries


@pytest.fixture(scope="module")
def scored(model_path):
    """The test network, and the pooled patch features and scores of six phantom slices."""
    from tomoqc.models.tiqa import load_model
    from tomoqc.phantom import electrode_slice

    m = load_model(model_path)
    imgs = np.stack([electrode_slice((256, 256), seed=40 + i)[0] for i in range(6)]).astype(np.float32)
    res = m.score_slices(imgs, measured_terms=False, tta=1, ood=False, measure=False, features=True)
    return m, res


def _head(m):
    return head_weights(m.model)


def test_head_scores_are_the_scorers_slice_scores(scored):
    """The objective's slice score (patch outputs through the card's map, clipped, averaged)
    is the score the scorer reports for the same slices without measured terms."""
    m, res = scored
    mine = head_scores(_head(m), res["features"], m.card)
    np.testing.assert_allclose(mine, res["score"], atol=1e-4)
    assert np.isnan(head_scores(_head(m), [np.zeros((0, res["features"][0].shape[1]), np.float32)], m.card))[0]


def _synthetic(scored, rng):
    """Patch features of real slices plus a multiple of one direction u: quality falls as the
    multiple grows. Labelled references (label 5 - 0.7 t) and ordered series (t rising)."""
    m, res = scored
    base = np.concatenate(res["features"])
    dim = base.shape[1]
    u = rng.normal(size=dim).astype(np.float32)
    u *= 0.5 * float(np.linalg.norm(base.std(axis=0))) / float(np.linalg.norm(u))

    def image(t):
        pick = base[rng.choice(len(base), 4)]
        return (pick + t * u + rng.normal(0, 0.01, pick.shape)).astype(np.float32)

    lab = PatchFeatures()
    labels = []
    for r in range(8):
        for level in range(6):
            t = level + rng.uniform(-0.2, 0.2)
            lab.patches.append(image(t))
            labels.append(5.0 - 0.7 * t)
            lab.groups.append(f"ref{r}")
            lab.kinds.append("noise" if level else "none")
    lab.labels = np.array(labels)
    series = []
    for k in range(10):
        ts = np.sort(rng.uniform(0, 5, 4))
        s = OrderedSeries(f"s{k}", "dose", "real" if k % 2 else "simulated")
        series.append((s, [image(t) for t in ts]))
    return lab, series


def test_refit_learns_an_order_the_starting_head_ignores(scored):
    m, _ = scored
    rng = np.random.default_rng(3)
    lab, series = _synthetic(scored, rng)
    before = [w.copy() for w in _head(m)]
    rec = refit_score_head(m, lab, series, steps=300, lr=3e-3, margin=0.1, anchor_weight=1e-4,
                           val_references=2, val_samples=("s0", "s1", "s2"), eval_every=50, seed=1)
    h = rec["history"]
    assert [r["step"] for r in h] == [0, 50, 100, 150, 200, 250, 300]
    # the model itself is not changed; the starting weights are returned as they were
    for a, b, c in zip(before, _head(m), rec["initial"]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # held-out references and held-out series, measured independently of the record
    val = [i for i, g in enumerate(lab.groups) if g in rec["split"]["val_references"]]
    assert len(rec["split"]["val_references"]) == 2 and len(val) == 12
    start = srocc(head_scores(rec["initial"], [lab.patches[i] for i in val], m.card), lab.labels[val])
    kept = srocc(head_scores(rec["weights"], [lab.patches[i] for i in val], m.card), lab.labels[val])
    assert kept > 0.95 > start
    for s, f in series[:3]:
        sc = head_scores(rec["weights"], f, m.card)
        assert np.all(np.diff(sc) < 0), s.name  # best first: scores fall along each held-out series
    assert rec["best"]["val"] == max(r["val"] for r in h)
    assert h[-1]["label_loss"] < h[1]["label_loss"]


def test_refit_needs_more_references_than_it_holds_out(scored):
    m, _ = scored
    lab, series = _synthetic(scored, np.random.default_rng(0))
    lab.groups = ["one"] * len(lab.groups)
    with pytest.raises(InputError, match="more than 3 labelled references"):
        refit_score_head(m, lab, series, steps=1)


def test_install_stage_writes_a_card_without_stale_fits(model_path, tmp_path):
    from tomoqc.models.tiqa import file_sha256
    from tomoqc.train.install import STALE_AFTER_STAGE, install_stage

    parent = tmp_path / "parent.keras"
    shutil.copyfile(model_path, parent)
    card = {"model_id": "tiqa-parent", "weights_sha256": "abc", "description": "A network.",
            "score_calibration": {"kind": None}, **{k: {"x": 1} for k in STALE_AFTER_STAGE}}
    parent.with_suffix(".json").write_text(json.dumps(card))
    dest = install_stage(model_path, parent, tmp_path / "out", stage="score_head", record={"steps": 5},
                         command="cmd", description="its head refitted", log=lambda s: None)
    new = json.loads(dest.with_suffix(".json").read_text())
    sha = file_sha256(dest)
    assert new["weights_sha256"] == sha and new["model_id"] == f"tiqa-default-{sha[:12]}"
    assert not set(STALE_AFTER_STAGE) & set(new)
    assert new["training"]["score_head"] == {"steps": 5, "parent": {
        "model_id": "tiqa-parent", "sha256": "abc", "command": None, "evaluation": {"x": 1}}}
    assert new["description"] == "A network; then its head refitted."
    assert new["score_calibration"] == {"kind": None}
    with pytest.raises(InputError, match="no model card"):
        install_stage(model_path, model_path, tmp_path / "o2", stage="s", record={}, command="c", description="d")


def test_level_pairs_order_levels_within_a_reference_domain_and_distortion():
    from tomoqc.train.score_head import level_pairs

    lab = PatchFeatures(groups=["a", "a", "a", "a", "a", "b", "b"],
                        kinds=["none", "noise", "noise", "blur", "mixed", "none", "noise"],
                        domains=["image"] * 5 + ["physics"] * 2,
                        levels=[0, 1, 3, 2, 2, 0, 5])
    pairs = set(level_pairs(lab, range(7)))
    # a/image: clean above both noise levels and the blur level; noise 1 above noise 3;
    # the mixture in no pair; b/physics: clean above its noise
    assert pairs == {(0, 1), (0, 2), (1, 2), (0, 3), (5, 6)}
    assert set(level_pairs(lab, [0, 2, 5])) == {(0, 2)}


def test_pair_weights_give_each_source_group_its_share():
    """Real and simulated pairs weigh 1 in total each, image-domain ones ``image_weight``,
    however many pairs each group has; without image pairs the halves are equal as before."""
    from tomoqc.train.score_head import _pair_weights

    src = ["real"] * 3 + ["simulated"] * 7 + ["image"] * 20
    for w in (0.0, 0.5, 1.0, 3.0):
        pw = _pair_weights(src, w)
        assert pw.sum() == pytest.approx(1.0, abs=1e-6)
        total = 2.0 + w
        assert pw[:3].sum() == pytest.approx(1 / total, abs=1e-6)
        assert pw[3:10].sum() == pytest.approx(1 / total, abs=1e-6)
        assert pw[10:].sum() == pytest.approx(w / total, abs=1e-6)
        assert len(set(np.round(pw[:3], 9))) == 1 and len(set(np.round(pw[10:], 9))) == 1
    pw = _pair_weights(["real"] * 2 + ["simulated"] * 6, 1.0)
    assert pw[:2].sum() == pytest.approx(0.5, abs=1e-6) and pw[2:].sum() == pytest.approx(0.5, abs=1e-6)


def test_image_ring_series_draws_rising_rings_into_each_real_slice(tmp_path):
    """A real-data folder holding one of the training samples gives one ring series of
    source "image": the clean slice first, then five levels whose measured ring index rises."""
    import tifffile

    from tomoqc.metrics.rings import ring_index
    from tomoqc.phantom import electrode_slice
    from tomoqc.train.score_head import image_ring_series

    (tmp_path / "qbi").mkdir()
    img = electrode_slice((200, 200), seed=5)[0].astype(np.float32)
    tifffile.imwrite(tmp_path / "qbi" / "wood.tif", img)
    series = image_ring_series(tmp_path, seed=1, log=lambda m: None)
    assert len(series) == 1
    s = series[0]
    assert (s.name, s.kind, s.source, len(s.images)) == ("wood#0", "img_ring", "image", 6)
    ri = [ring_index(a) for a in s.images]
    assert all(b > a for a, b in zip(ri, ri[1:])), np.round(ri, 4)
