"""Every batched defense equals its reference library, on random and on adversarial images."""
import cv2
import numpy as np
import pytest
import torch
from robustgrid.attacks import get_attack, to_8bit_grid
from robustgrid.defenses import apply_defense, defense_names, to_uint8
from skimage.restoration import denoise_tv_chambolle


def _oracle(name, img, **p):
    """The libraries called directly, as the notebooks did (RGB uint8 HWC in)."""
    if name == "none":
        return img / 255.0
    if name == "gaussian_blur":
        return cv2.GaussianBlur(img, (p.get("ksize", 3),) * 2, 0) / 255.0
    if name == "median":
        return cv2.medianBlur(img, p.get("ksize", 3)) / 255.0
    if name == "jpeg":
        _, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, p.get("quality", 30)])
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) / 255.0
    if name == "tv_denoise":
        return denoise_tv_chambolle(img, weight=p.get("weight", 0.1), channel_axis=-1)
    raise KeyError(name)


def _oracle_batch(name, images, **p):
    hwc = to_uint8(images).permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([_oracle(name, np.ascontiguousarray(i), **p) for i in hwc])).permute(0, 3, 1, 2)


def assert_equal_images(name, got, expected):
    if name == "tv_denoise":        # float output: within 1e-5 of skimage (DESIGN.md)
        assert (got.double() - expected.double()).abs().max().item() <= 1e-5
    else:                           # 8-bit defenses: the same uint8 pixels, bit for bit
        assert torch.equal(torch.round(got.double() * 255), torch.round(expected.double() * 255))
        assert (got.double() - expected.double()).abs().max().item() < 1e-6  # and truly on the grid


PARAMS = [("none", {}), ("gaussian_blur", {}), ("median", {}), ("median", {"ksize": 5}), ("jpeg", {}),
          ("jpeg", {"quality": 75}), ("tv_denoise", {}), ("tv_denoise", {"weight": 0.3})]


@pytest.mark.parametrize("name,params", PARAMS)
@pytest.mark.parametrize("backend", ["reference", "batched"])
def test_defense_equals_library(name, params, backend, images):
    expected = _oracle_batch(name, images, **params)
    assert_equal_images(name, apply_defense(name, images, params, backend), expected)


@pytest.mark.parametrize("name", ["gaussian_blur", "median", "jpeg", "tv_denoise"])
def test_batched_equals_reference_on_adversarial_images(name, tiny_model, images):
    labels = torch.arange(len(images)) % 10
    adv = to_8bit_grid(get_attack("fgsm")(tiny_model, images, labels, 8 / 255))
    ref = apply_defense(name, adv, backend="reference")
    fast = apply_defense(name, adv, backend="batched")
    assert_equal_images(name, fast, ref)


def test_defenses_keep_shape_range_and_odd_sizes():
    x = torch.rand(3, 3, 17, 23)
    for name in defense_names():
        out = apply_defense(name, x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert_equal_images(name, out, apply_defense(name, x, backend="reference"))


def test_tv_per_plane_stopping_matters():
    """A flat plane converges at once, a noisy one late: a shared stop would differ from skimage."""
    x = torch.zeros(1, 3, 32, 32)
    x[0, 1] = torch.rand(32, 32)
    x[0, 2] = 0.5
    ref = apply_defense("tv_denoise", x, backend="reference")
    assert_equal_images("tv_denoise", apply_defense("tv_denoise", x), ref)


def test_tv_compiled_loop_is_skimage_bit_for_bit_and_the_torch_port_within_an_ulp(images):
    """Per plane against skimage's own iterations (float64, before the float32 cast): the CPU's compiled
    loop equal, the port (other devices, or no numba) within 1e-12 (rounding drift), on random and smooth planes."""
    from robustgrid.defenses import tv_kernel
    from robustgrid.defenses.tv_denoise import chambolle_planes
    from skimage.restoration._denoise import _denoise_tv_chambolle_nd
    x = torch.cat([images, torch.nn.functional.avg_pool2d(images, 3, 1, 1)])
    planes = (to_uint8(x).double() / 255).reshape(-1, x.shape[2], x.shape[3])
    for weight in (0.1, 0.3):
        want = torch.from_numpy(np.stack([_denoise_tv_chambolle_nd(p, weight, 2e-4, 200) for p in planes.numpy()]))
        assert torch.equal(tv_kernel.chambolle_planes(planes, weight, 2e-4, 200), want)
        assert (chambolle_planes(planes, weight, 2e-4, 200) - want).abs().max().item() <= 1e-12


def test_unknown_backend_and_defense():
    with pytest.raises(ValueError):
        apply_defense("none", torch.rand(1, 3, 4, 4), backend="nope")
    with pytest.raises(KeyError):
        apply_defense("blur", torch.rand(1, 3, 4, 4))


@pytest.mark.parametrize("name", ["none", "gaussian_blur", "jpeg", "median", "tv_denoise", "random_resize_pad"])
def test_bpda_forward_is_the_real_defense_and_backward_the_declared_gradient(name, images):
    """An adaptive attacker sees the real defense and differentiates its declared stand-in."""
    from robustgrid.defenses import DEFENSES, defend_differentiably, defense_gradient
    x = images.clone().requires_grad_(True)
    y = defend_differentiably(name, x)
    assert torch.equal(y.detach(), apply_defense(name, images))                  # forward: the real thing
    w = torch.randn_like(images)
    (got,) = torch.autograd.grad((y * w).sum(), x)
    approx = DEFENSES.get(name).extras["approx"]
    if approx is None:                                                            # identity BPDA
        assert torch.equal(got, w)
    else:
        x2 = images.clone().requires_grad_(True)
        (want,) = torch.autograd.grad((approx(x2) * w).sum(), x2)
        assert torch.equal(got, want)
    assert defense_gradient(name) == {"none": "exact", "gaussian_blur": "exact", "median": "bpda_median",
                                      "jpeg": "bpda_jpeg", "tv_denoise": "bpda_tv_unrolled20",
                                      "random_resize_pad": "exact"}[name]


def test_blur_and_median_stand_ins_are_the_defenses_before_rounding(images):
    from robustgrid.defenses.gaussian_blur import smooth
    from robustgrid.defenses.median import window_median
    assert (smooth(images) - apply_defense("gaussian_blur", images)).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(torch.round(window_median(images) * 255), torch.round(apply_defense("median", images) * 255))


def test_blur_stand_in_is_opencvs_kernel_as_a_convolution(images):
    """The blur's stand-in (shifted adds, for speed) is the convolution with OpenCV's kernel and
    reflect-101 borders, forward and backward (its exact gradient), in float32 and float64."""
    import torch.nn.functional as F
    from robustgrid.defenses.gaussian_blur import smooth
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        for ksize, sigma in ((3, 0.0), (5, 1.5)):
            k = torch.from_numpy(cv2.getGaussianKernel(ksize, sigma)).to(dtype)
            kernel = (k @ k.T).view(1, 1, ksize, ksize)
            x = images.to(dtype).requires_grad_(True)
            r = ksize // 2
            want = F.conv2d(F.pad(x.reshape(-1, 1, 32, 32), (r, r, r, r), mode="reflect"), kernel).view_as(x)
            got = smooth(x, ksize, sigma)
            w = torch.randn_like(got)
            (g_want,) = torch.autograd.grad((want * w).sum(), x)
            (g_got,) = torch.autograd.grad((got * w).sum(), x)
            assert (got - want).abs().max() < tol and (g_got - g_want).abs().max() < tol * 10


def test_tv_stand_in_is_skimages_first_iterations(images):
    """The unrolled TV (the adaptive attacker's gradient) runs skimage's own Chambolle updates: with
    its stop test out of reach, 20 of skimage's iterations give the same image to 1e-6 (the stand-in's
    1e-12 under the square root, which keeps flat regions differentiable, moves it by ~2e-8; one
    iteration more or fewer moves it by ~1e-3)."""
    from robustgrid.defenses.tv_denoise import UNROLLED_ITERATIONS, unrolled
    x = images[:4].double()
    hwc = x.permute(0, 2, 3, 1).numpy()
    want = np.stack([denoise_tv_chambolle(im, weight=0.1, eps=1e-300, max_num_iter=UNROLLED_ITERATIONS,
                                          channel_axis=-1) for im in hwc])
    got = unrolled(x).permute(0, 2, 3, 1).numpy()
    assert np.abs(got - want).max() < 1e-6


def test_random_resize_pad_reference_batched_and_batch_independence(images):
    """The randomized defense: batched equal to its per-image reference for every draw, an image's
    draw independent of its batch, draws that differ, and every size in its range drawn."""
    from robustgrid.defenses.resize_pad import draws_torch
    for draw in (0, 1, 5):
        p = {"draw": draw, "min_size": 24}
        full = apply_defense("random_resize_pad", images, p)
        assert torch.equal(full, apply_defense("random_resize_pad", images, p, backend="reference"))
        assert torch.equal(apply_defense("random_resize_pad", images[7:11], p), full[7:11])
    assert not torch.equal(apply_defense("random_resize_pad", images, {"draw": 0}),
                           apply_defense("random_resize_pad", images, {"draw": 1}))
    many = torch.round(torch.rand(2000, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    size, top, left = draws_torch(many, seed=0, draw=0, min_size=26)
    assert set(size.tolist()) == set(range(26, 33)) and (top + size <= 32).all() and (left + size <= 32).all()


def test_eot_averages_the_declared_number_of_draws(tiny_model, images):
    """An adaptive attacker through a randomized defense: its gradient is the mean over draws 1..k."""
    from robustgrid.attacks import input_gradient
    from robustgrid.runner.evaluate.engine import ThroughDefense
    labels = torch.arange(len(images)) % 10
    through = ThroughDefense(tiny_model, "random_resize_pad", {}, "batched", eot_samples=4)
    assert through.eot_draws == [1, 2, 3, 4]
    eot = input_gradient(through, images, labels)
    singles = []
    for d in through.eot_draws:
        one = ThroughDefense(tiny_model, "random_resize_pad", {}, "batched", eot_samples=1)
        one.draw, one.eot_draws = d, None
        singles.append(input_gradient(one, images, labels))
    # the same per-image scale for every draw: the mean up to that (positive) scale
    signs_equal = (eot.sign() == torch.stack(singles).mean(0).sign()).float().mean()
    assert signs_equal > 0.999
    assert not torch.equal(singles[0].sign(), singles[1].sign())


def test_the_attacker_cannot_re_roll_the_defenders_draw(images):
    """The defender's draws come from the image's index, never its pixels: an attacker who moves one pixel
    by one level (inside any eps-ball) changes that pixel's copies in the output, not the resize-and-pad
    drawn for the image. (With draws hashed from the pixels, every image got a fresh size and offset.)"""
    index = torch.arange(100, 100 + len(images))
    moved = images.clone()
    moved[:, :, 16, 16] = torch.where(moved[:, :, 16, 16] < 0.5, moved[:, :, 16, 16] + 1 / 255, moved[:, :, 16, 16] - 1 / 255)
    for draw in range(5):
        a = apply_defense("random_resize_pad", images, {"draw": draw}, index=index)
        b = apply_defense("random_resize_pad", moved, {"draw": draw}, index=index)
        assert (a != b).flatten(1).sum(1).max() <= 3 * 4       # 3 channels, one pixel copied at most 2 x 2 times
        assert torch.equal(a, apply_defense("random_resize_pad", images, {"draw": draw}, backend="reference", index=index))
        assert torch.equal(a[5:9], apply_defense("random_resize_pad", images[5:9], {"draw": draw}, index=index[5:9]))
    # the draws are the image's, not the batch position's, and differ between draws and images
    d0 = apply_defense("random_resize_pad", images, {"draw": 0}, index=index)
    assert not torch.equal(d0, apply_defense("random_resize_pad", images, {"draw": 1}, index=index))
    assert not torch.equal(d0, apply_defense("random_resize_pad", images, {"draw": 0}, index=index + 1))


def test_defender_draws_cover_the_range_and_ignore_pixels():
    from robustgrid.defenses.resize_pad import defender_draws
    size, top, left = defender_draws(np.arange(5000), seed=0, draw=0, h=32, w=32, min_size=26)
    assert set(size.tolist()) == set(range(26, 33)) and (top + size <= 32).all() and (left + size <= 32).all()
    assert np.bincount(size - 26).min() > 5000 / 7 * 0.8       # about uniform over the 7 sizes
    again = defender_draws(np.arange(5000), seed=0, draw=0, h=32, w=32, min_size=26)
    assert all(np.array_equal(a, b) for a, b in zip((size, top, left), again))
