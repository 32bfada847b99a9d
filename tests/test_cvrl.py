import pytest
import torch
from conftest import assert_cubes_inside
from scipy import stats

from paramcrop import CVRLCrop
from paramcrop.crops.cvrl import power_law_cdf, sample_power_law_interval


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_interval_distribution_matches_power_law_density(power):
    torch.manual_seed(0)
    x = sample_power_law_interval(20000, power).double().numpy()
    cdf = lambda v: power_law_cdf(torch.as_tensor(v), power).numpy()
    assert stats.kstest(x, cdf).pvalue > 0.01
    other = 2.0 if power == 1.0 else 1.0  # the test has the power to tell the two apart
    wrong = lambda v: power_law_cdf(torch.as_tensor(v), other).numpy()
    assert stats.kstest(x, wrong).pvalue < 1e-6


def test_power_law_cdf_hand_values():
    # p = 1: density 2 (1 - x), CDF 2x - x^2
    assert power_law_cdf(torch.tensor(0.5), 1.0).item() == pytest.approx(0.75)
    # p = 2: density 1.5 (1 - x^2), CDF 1.5 (x - x^3 / 3)
    assert power_law_cdf(torch.tensor(0.5), 2.0).item() == pytest.approx(1.5 * (0.5 - 0.125 / 3))
    assert power_law_cdf(torch.tensor(1.0), 3.0).item() == pytest.approx(1.0)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_view_start_gap_follows_the_density_end_to_end(power):
    torch.manual_seed(1)
    crop = CVRLCrop((4, 8, 8), duration=0.4, power=power)
    c1, c2 = crop.sample_cubes(20000, torch.device("cpu"), 0)
    room = 2 - 2 * 0.4
    gap = ((c1[:, 2] - c2[:, 2]).abs() / room).double().numpy()
    cdf = lambda v: power_law_cdf(torch.as_tensor(v), power).numpy()
    assert stats.kstest(gap, cdf).pvalue > 0.01
    # order shuffled: view 1 starts first about half the time
    first = (c1[:, 2] < c2[:, 2]).float().mean().item()
    assert 0.47 < first < 0.53


def test_cubes_inside_clip_with_fixed_duration():
    torch.manual_seed(2)
    crop = CVRLCrop((4, 8, 8), area=(0.3, 1.0), duration=0.5)
    for c in crop.sample_cubes(5000, torch.device("cpu"), 0):
        assert_cubes_inside(c)
        assert torch.all(c[:, 5] == 0.5)
        assert (c[:, 3] * c[:, 4]).min() >= 0.3 - 1e-6


def test_fixed_seed_gives_identical_cubes():
    crop = CVRLCrop((4, 8, 8))
    torch.manual_seed(3)
    a = crop.sample_cubes(8, torch.device("cpu"), 0)
    torch.manual_seed(3)
    b = crop.sample_cubes(8, torch.device("cpu"), 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kwargs,name", [({"power": 0}, "power"), ({"duration": 1.5}, "duration")])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CVRLCrop((4, 8, 8), **kwargs)
