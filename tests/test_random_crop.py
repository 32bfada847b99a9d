import pytest
import torch
from conftest import assert_cubes_inside

from paramcrop import RandomCubicCrop, create_crop, crop_video


def test_cubes_inside_clip_and_in_configured_ranges():
    torch.manual_seed(0)
    crop = RandomCubicCrop((4, 8, 8), area=(0.3, 1.0), aspect=(0.5, 2.0), duration=(0.4, 0.9))
    c1, c2 = crop.sample_cubes(5000, torch.device("cpu"), step=0)
    for c in (c1, c2):
        assert_cubes_inside(c)
        area = c[:, 3] * c[:, 4]
        assert area.min() >= 0.3 - 1e-6 and area.max() <= 1 + 1e-6
        assert c[:, 5].min() >= 0.4 and c[:, 5].max() <= 0.9
        aspect = c[:, 3] / c[:, 4]
        unclamped = (c[:, 3] < 1) & (c[:, 4] < 1)
        assert aspect[unclamped].min() >= 0.5 - 1e-5 and aspect[unclamped].max() <= 2 + 1e-5
        # centers spread over the whole allowed range (uniform placement), both signs
        assert c[:, 0].min() < -0.3 and c[:, 0].max() > 0.3


def test_views_are_crops_of_the_cubes():
    torch.manual_seed(1)
    clips = torch.randint(0, 256, (3, 3, 8, 16, 16), dtype=torch.uint8)
    crop = create_crop("random", (4, 8, 8))
    torch.manual_seed(2)
    views = crop(clips)
    torch.testing.assert_close(views.x1, crop_video(clips, views.cubes1, (4, 8, 8)))
    torch.testing.assert_close(views.x2, crop_video(clips, views.cubes2, (4, 8, 8)))
    assert not torch.equal(views.cubes1, views.cubes2)


def test_fixed_seed_gives_identical_cubes():
    crop = RandomCubicCrop((4, 8, 8))
    torch.manual_seed(7)
    a = crop.sample_cubes(16, torch.device("cpu"), 0)
    torch.manual_seed(7)
    b = crop.sample_cubes(16, torch.device("cpu"), 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kwargs,name", [({"area": (0.5, 0.2)}, "area"), ({"aspect": (0, 2)}, "aspect"),
                                         ({"duration": (0.5, 1.5)}, "duration")])
def test_bad_ranges_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RandomCubicCrop((4, 8, 8), **kwargs)


def test_registry_rejects_unknown_names_and_keys():
    with pytest.raises(ValueError, match="valid crop methods: curriculum, cvrl, hardest, matched, paramcrop, random, replay"):
        create_crop("nope", (4, 8, 8))
    with pytest.raises(ValueError, match="'areas'.*valid keys: area, aspect, duration"):
        create_crop("random", (4, 8, 8), areas=(0.3, 1))
