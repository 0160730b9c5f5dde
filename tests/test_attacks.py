import copy

import torch
from robustgrid.attacks import attack_names, get_attack, to_8bit_grid


def test_fgsm_equals_torchattacks_bit_for_bit(tiny_model, images):
    torchattacks = __import__("torchattacks")
    labels = torch.arange(len(images)) % 10
    for eps in (2 / 255, 8 / 255, 0.03):
        ours = get_attack("fgsm")(tiny_model, images, labels, eps)
        theirs = torchattacks.FGSM(tiny_model, eps=eps)(images, labels)
        assert torch.equal(ours, theirs), eps


def test_fgsm_changes_images_within_eps_and_lowers_accuracy(tiny_model, images):
    labels = tiny_model(images).argmax(1)     # the model is right on all of them
    adv = get_attack("fgsm")(tiny_model, images, labels, 8 / 255)
    assert (adv - images).abs().max() <= 8 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (tiny_model(adv).argmax(1) == labels).float().mean() < 1.0


def test_fgsm_eps_zero_is_identity(tiny_model, images):
    assert torch.equal(get_attack("fgsm")(tiny_model, images, torch.zeros(len(images), dtype=torch.long), 0.0), images)


def test_8bit_grid_rounds_not_truncates():
    x = torch.tensor([0.0, 0.6 / 255, 1.4 / 255, 1.6 / 255, 1.0])
    assert torch.equal(to_8bit_grid(x) * 255, torch.tensor([0.0, 1.0, 1.0, 2.0, 255.0]))


def test_registry():
    assert "fgsm" in attack_names()


def _confident(model):
    """The same network with its logits scaled up: softmax near one-hot, as a well-trained model's."""
    with torch.no_grad():
        model[-1].weight.mul_(400)
        model[-1].bias.zero_()
    return model


def test_fp16_input_gradients_do_not_underflow(tiny_model, images):
    """The mean cross-entropy's gradient through an fp16 model underflows to zero on confident
    images, and sign(0) leaves those pixels unperturbed: the loss is scaled per image (a power of
    two, exact in fp32) before the backward pass."""
    from robustgrid.attacks import input_gradient
    from robustgrid.models import quantize
    model = _confident(tiny_model)
    x = images.repeat(4, 1, 1, 1)
    labels = model(x).argmax(1)
    assert torch.softmax(model(x), 1).max(1).values.min() > 0.999
    half = quantize(model, "fp16")
    plain = x.clone().requires_grad_(True)
    unscaled = torch.autograd.grad(torch.nn.CrossEntropyLoss()(half(plain), labels), plain)[0]
    assert (unscaled == 0).float().mean() > 0.5            # the defect this guards against
    grad = input_gradient(half, x, labels)
    assert torch.isfinite(grad).all()
    assert not (grad.flatten(1) == 0).all(1).any()          # every image gets a gradient
    # what is left are exact cancellations of fp16 sums (independent of the scale), ~1e-4 of pixels
    assert (grad == 0).float().mean() < 1e-3
    assert (input_gradient(model, x, labels) == 0).sum() == 0
    # and the step it gives moves almost every pixel the way the fp32 model's does
    assert (grad.sign() == input_gradient(model, x, labels).sign()).float().mean() > 0.98


def test_no_image_is_left_without_a_gradient_however_confident_the_model(tiny_model):
    """A margin past ~100 makes the softmax one-hot even in float32, so no power-of-two scale revives the
    cross-entropy's gradient (an H200 met it in fp16 at margins the CPU's fp16 kept): every such image takes
    the gradient of the loss's exact direction, in fp32, bf16 and fp16 alike."""
    from robustgrid.attacks import input_gradient
    from robustgrid.models import quantize
    model = copy.deepcopy(tiny_model)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 3, 32, 32, generator=g)
    with torch.no_grad():
        model[-1].weight.mul_(5000)
        top2 = model(x).topk(2, 1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 110          # one-hot in float32: the defect's regime
    labels = model(x).argmax(1)
    fp32_grad = input_gradient(model, x, labels)
    for mode in ("fp32", "bf16", "fp16"):
        m = model if mode == "fp32" else quantize(copy.deepcopy(model), mode)
        grad = input_gradient(m, x, labels)
        assert torch.isfinite(grad).all() and not (grad.flatten(1) == 0).all(1).any(), mode
        if mode != "fp32":   # the step still points where the fp32 model's does
            assert (grad.sign() == fp32_grad.sign()).float().mean() > 0.9, mode


def test_scaled_gradient_keeps_fgsm_equal_to_torchattacks_on_a_confident_model(tiny_model, images):
    torchattacks = __import__("torchattacks")
    model = _confident(tiny_model)
    labels = model(images).argmax(1)
    for eps in (2 / 255, 8 / 255):
        assert torch.equal(get_attack("fgsm")(model, images, labels, eps), torchattacks.FGSM(model, eps=eps)(images, labels))


def test_pgd_equals_torchattacks_with_the_same_random_start(tiny_model, images):
    """PGD's first candidate is its final iterate: torchattacks' PGD from the same start, bit for bit; the
    start is random_starts' draw, which is torchattacks' own after torch.manual_seed(start_seed(seed, r))."""
    from robustgrid.attacks import random_starts, start_seed
    torchattacks = __import__("torchattacks")
    labels = tiny_model(images).argmax(1)
    for eps, alpha, steps in ((8 / 255, 2 / 255, 5), (4 / 255, 1 / 255, 3)):
        torch.manual_seed(start_seed(7, 0))
        theirs = torchattacks.PGD(tiny_model, eps=eps, alpha=alpha, steps=steps, random_start=True)(images, labels)
        starts = random_starts(len(images), (3, 32, 32), 1, seed=7, eps=eps)
        ours = get_attack("pgd")(tiny_model, images, labels, eps, steps=steps, alpha=alpha, starts=starts)
        assert ours.shape == (len(images), 2, 3, 32, 32)          # final and best iterate
        assert torch.equal(ours[:, 0], theirs), eps
    no_start = torchattacks.PGD(tiny_model, eps=8 / 255, alpha=2 / 255, steps=4, random_start=False)(images, labels)
    assert torch.equal(get_attack("pgd")(tiny_model, images, labels, 8 / 255, steps=4, alpha=2 / 255,
                                         random_start=False)[:, 0], no_start)


def test_pgd_best_iterate_is_the_strongest_iterate_on_the_attackers_model(tiny_model, images):
    """The best candidate is, per image, the first iterate (start included) that scores highest on the
    attacker's model, checked against every iterate replayed with torchattacks (PGD of 0..steps steps)."""
    from robustgrid.attacks import random_starts, start_seed, strength
    torchattacks = __import__("torchattacks")
    labels = tiny_model(images).argmax(1)
    eps, alpha, steps = 8 / 255, 1 / 255, 4
    starts = random_starts(len(images), (3, 32, 32), 1, seed=2, eps=eps)
    cands = get_attack("pgd")(tiny_model, images, labels, eps, steps=steps, alpha=alpha, starts=starts)
    iterates = []
    for t in range(steps + 1):
        torch.manual_seed(start_seed(2, 0))
        iterates.append(torchattacks.PGD(tiny_model, eps=eps, alpha=alpha, steps=t, random_start=True)(images, labels))
    with torch.no_grad():
        keys = torch.stack([strength(tiny_model(x), labels) for x in iterates])      # (steps + 1, N)
    first_best = keys.argmax(0)          # argmax returns the first maximal index
    want = torch.stack([iterates[t][i] for i, t in enumerate(first_best.tolist())])
    assert torch.equal(cands[:, 1], want)
    assert (first_best < steps).any(), "a case where the best iterate is not the last proves more"


def test_pgd_images_do_not_depend_on_the_batch_size(tiny_model, images):
    from robustgrid.attacks import random_starts
    from robustgrid.runner.evaluate.batching import attack_images
    labels = tiny_model(images).argmax(1)
    eps = 8 / 255
    starts = random_starts(len(images), (3, 32, 32), 2, seed=3, eps=eps)
    made = [attack_images(tiny_model, tiny_model, "pgd", images, labels, eps, torch.device("cpu"), bs,
                          {"steps": 3, "restarts": 2, "random_start": True}, {"starts": starts}) for bs in (24, 7, 1)]
    for other in made[1:]:
        assert (other != made[0]).float().mean() < 1e-3     # float sums may block differently; the images do not
    assert made[0].shape[1] == 4 and (made[0] - images.unsqueeze(1)).abs().max() <= eps + 1e-6


def test_random_starts_do_not_depend_on_the_set_size():
    from robustgrid.attacks import random_starts
    a = random_starts(24, (3, 32, 32), 2, seed=5, eps=4 / 255)
    b = random_starts(10, (3, 32, 32), 2, seed=5, eps=4 / 255)
    assert torch.equal(a[:10], b) and not torch.equal(a[:, 0], a[:, 1]) and a.abs().max() <= 4 / 255


def test_delivered_images_stay_inside_the_labelled_ball():
    """eps 0.03 = 7.65 levels: a pixel moved by 0.03 rounds to 8 levels, outside the ball; delivered at 7."""
    from robustgrid.attacks import deliver, eps_levels
    clean = torch.round(torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255) / 255
    adv = (clean + 0.03 * torch.sign(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)))).clamp(0, 1)
    out = deliver(adv, clean, 0.03)
    assert eps_levels(0.03) == 7 and eps_levels(8 / 255) == 8 and eps_levels(1 / 255) == 1
    assert torch.round((out - clean).abs().amax() * 255) == 7 and (out - clean).abs().max() <= 0.03
    assert torch.equal(torch.round(out * 255), out * 255)                       # on the 8-bit grid
    assert torch.equal(deliver(adv, clean, 8 / 255), to_8bit_grid(adv))         # inside the ball: plain rounding
    assert deliver(torch.stack([adv, clean], 1), clean, 0.03).shape == (4, 2, 3, 8, 8)


def test_zoo_backend_runs_torchattacks_by_name(tiny_model, images):
    torchattacks = __import__("torchattacks")
    labels = tiny_model(images).argmax(1)
    theirs = torchattacks.FGSM(tiny_model, eps=8 / 255)(images, labels)
    assert torch.equal(get_attack("torchattacks.FGSM")(tiny_model, images, labels, 8 / 255), theirs)
    import pytest
    from robustgrid.attacks.zoo import check_zoo_attack
    with pytest.raises(ValueError, match="no attack 'NoSuch'"):
        check_zoo_attack("NoSuch", {})
    with pytest.raises(ValueError, match=".stepz: unknown parameter"):
        check_zoo_attack("PGD", {"stepz": 3})


def test_frozen_weights_give_the_same_input_gradient_and_are_restored(tiny_model, images):
    from robustgrid.attacks import input_gradient, input_gradients_only
    labels = torch.arange(len(images)) % 10
    plain = input_gradient(tiny_model, images, labels)
    with input_gradients_only(tiny_model):
        assert not any(p.requires_grad for p in tiny_model.parameters())
        frozen = input_gradient(tiny_model, images, labels)
    assert torch.equal(frozen, plain)
    assert all(p.requires_grad for p in tiny_model.parameters())
