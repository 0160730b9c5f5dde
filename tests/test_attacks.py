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


def test_scaled_gradient_keeps_fgsm_equal_to_torchattacks_on_a_confident_model(tiny_model, images):
    torchattacks = __import__("torchattacks")
    model = _confident(tiny_model)
    labels = model(images).argmax(1)
    for eps in (2 / 255, 8 / 255):
        assert torch.equal(get_attack("fgsm")(model, images, labels, eps), torchattacks.FGSM(model, eps=eps)(images, labels))
