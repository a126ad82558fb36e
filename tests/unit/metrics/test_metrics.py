import math

import numpy as np
import pytest
import torch

from pemma.metrics.segmentation import DiceAccumulator, boundary_metrics


def _volume(voxels: dict[int, int]) -> torch.Tensor:
    """A 1x1x4x4x4 label map with the given number of voxels of each class, laid out in order."""
    flat = torch.zeros(64, dtype=torch.long)
    i = 0
    for cls, n in voxels.items():
        flat[i : i + n] = cls
        i += n
    return flat.reshape(1, 1, 4, 4, 4)


def test_aggregated_dice_sums_voxels_over_cases_and_excludes_double_empty_cases():
    acc = DiceAccumulator()
    # Case A: GTVp truth 10 voxels, prediction covers 6 of them + 2 false positives. No GTVn anywhere.
    truth_a = _volume({1: 10})
    pred_a = torch.zeros(64, dtype=torch.long)
    pred_a[:6] = 1
    pred_a[20:22] = 1
    acc.add(pred_a.reshape(1, 1, 4, 4, 4), truth_a)
    # Case B: GTVp truth 2 voxels, none predicted; GTVn truth 4, predicted exactly.
    truth_b = torch.zeros(64, dtype=torch.long)
    truth_b[:2] = 1
    truth_b[10:14] = 2
    pred_b = torch.zeros(64, dtype=torch.long)
    pred_b[10:14] = 2
    acc.add(pred_b.reshape(1, 1, 4, 4, 4), truth_b.reshape(1, 1, 4, 4, 4))
    agg = acc.aggregated()
    # GTVp: 2*(6+0) / ((8+10) + (0+2)) = 12/20
    assert math.isclose(agg["gtvp"], 0.6)
    # GTVn: case A adds nothing; 2*4/(4+4) = 1
    assert math.isclose(agg["gtvn"], 1.0)
    assert math.isclose(agg["mean"], 0.8)
    case = acc.case_mean()
    # GTVp per case: A = 12/18, B = 0 -> mean 1/3; GTVn: A is empty/empty (excluded), B = 1.
    assert math.isclose(case["gtvp"], (12 / 18 + 0) / 2, rel_tol=1e-6)
    assert math.isclose(case["gtvn"], 1.0)


def test_false_positive_on_empty_truth_scores_zero_per_case_and_a_class_absent_from_the_split_is_undefined():
    acc = DiceAccumulator()
    pred = _volume({2: 3})
    acc.add(pred, torch.zeros_like(pred))
    assert acc.case_mean()["gtvn"] == 0.0  # per case: a false positive on an empty truth scores 0
    assert np.isnan(acc.aggregated()["gtvn"])  # no GTVn in any truth: undefined, whatever is predicted
    assert np.isnan(acc.aggregated()["gtvp"])


def test_the_headline_mean_is_over_both_classes_or_undefined_the_same_for_every_prediction():
    truth = _volume({1: 8})  # a split with GTVp only
    perfect, with_false_positive = DiceAccumulator(), DiceAccumulator()
    perfect.add(truth, truth)
    noisy = truth.clone().reshape(-1)
    noisy[-1] = 2  # one false-positive GTVn voxel used to halve the headline (0.5 instead of 1.0)
    with_false_positive.add(noisy.reshape(truth.shape), truth)
    for acc in (perfect, with_false_positive):
        agg = acc.aggregated()
        assert agg["gtvp"] == 1.0 and np.isnan(agg["gtvn"]) and np.isnan(agg["mean"])


def test_continual_summary_against_hand_computed_values():
    from pemma.metrics.continual import continual_summary

    r = np.array(
        [
            [0.80, 0.30, 0.20],  # after the adaptation centre
            [0.70, 0.75, 0.40],  # after centre 2
            [0.60, 0.65, 0.90],  # after centre 3
        ]
    )
    got = continual_summary(r)
    assert math.isclose(got["acc"], (0.60 + 0.65 + 0.90) / 3)
    assert math.isclose(got["bwt"], ((0.60 - 0.80) + (0.65 - 0.75)) / 2)
    assert math.isclose(got["forgetting"], ((0.80 - 0.60) + (0.75 - 0.65)) / 2)
    assert math.isnan(continual_summary(r[:1, :1])["bwt"])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_hd95_of_a_box_against_itself_shifted_by_k_voxels_is_k_times_the_spacing(k):
    """A hand-made phantom: a 20-voxel cube moved k voxels along one axis. The surface points of its
    two faces across the shift (a third of the surface) lie k voxels (k x spacing mm) from the other
    cube's surface and no point lies farther, so the 95th percentile is k x spacing. (A sphere's
    HD95 is less than its shift: most of its surface runs nearly parallel to the shift.)"""
    box = np.zeros((40, 40, 40), dtype=np.uint8)
    box[8:28, 10:30, 10:30] = 1
    spacing = (2.5, 1.0, 1.0)
    truth = torch.as_tensor(box)
    moved = torch.as_tensor(np.roll(box, k, axis=0))
    hd95, nsd = boundary_metrics(moved, truth, spacing, tolerance_mm=k * 2.5)
    assert hd95[0] == pytest.approx(k * 2.5)
    assert nsd[0] == pytest.approx(1.0), "every boundary point within the tolerance k x 2.5 mm"
    hd95, nsd = boundary_metrics(moved, truth, spacing, tolerance_mm=k * 2.5 - 0.5)
    assert nsd[0] < 1.0
    assert np.isnan(hd95[1]) and np.isnan(nsd[1]), "no GTVn in either: undefined, left out"


def test_a_missed_or_invented_structure_is_the_worst_case_not_left_out():
    truth = torch.zeros(10, 20, 30, dtype=torch.uint8)
    truth[2:5, 2:5, 2:5] = 1
    empty = torch.zeros_like(truth)
    diagonal = float(np.linalg.norm([10 * 2.0, 20 * 1.0, 30 * 1.0]))
    for prediction, reference in ((empty, truth), (truth, empty)):
        hd95, nsd = boundary_metrics(prediction, reference, (2.0, 1.0, 1.0), tolerance_mm=3.0)
        assert hd95[0] == pytest.approx(diagonal) and nsd[0] == 0.0


def test_boundary_metrics_on_the_box_around_the_structures_equal_monai_on_the_whole_grid():
    """The metrics are computed on the box around both maps' structures (20x faster on a HECKTOR-size
    grid): the same values as MONAI on the whole grid, structures touching the image border included."""
    import warnings

    from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    from monai.networks.utils import one_hot

    spacing = (1.5, 1.0, 2.0)
    for shift in range(4):
        a = np.zeros((30, 25, 20), np.uint8)
        b = np.zeros_like(a)
        a[0:8, 3:12, 5:20], b[1:9, 4:13, 4:19] = 1, 1  # touching the borders
        a[15:22, 10:20, 0:6], b[14:23, 11:25, 0:5] = 2, 2
        a, b = np.roll(a, shift, axis=1), np.roll(b, -shift, axis=2)
        hd95, nsd = boundary_metrics(torch.as_tensor(a), torch.as_tensor(b), spacing, 2.0)
        pred, true = (one_hot(torch.as_tensor(m)[None, None].long(), 3) for m in (a, b))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            whole_hd = compute_hausdorff_distance(pred, true, percentile=95, spacing=spacing)[0].numpy()
            whole_nsd = compute_surface_dice(pred, true, [2.0, 2.0], spacing=spacing)[0].numpy()
        assert hd95 == pytest.approx(whole_hd, rel=1e-6) and nsd == pytest.approx(whole_nsd, rel=1e-6)
