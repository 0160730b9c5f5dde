import torch

from attacks import attack_names, get_attack, to_8bit_grid


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
