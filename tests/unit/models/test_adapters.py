"""Module surgery and portable results: Swin split forward, q,v split, saved state round trips, merging."""

import copy

import pytest
import torch
from helpers.models import CFGS, MATRIX, base_model, inputs, on_backbone, one_step
from monai.networks.nets import UNETR, SwinUNETR
from peft.tuners.tuners_utils import BaseTunerLayer

from pemma.config import resolve
from pemma.methods import METHODS, build_method
from pemma.models.adapters import SplitQKV, WidenedConv, fuse_qkv, merge_adapters, split_qkv
from pemma.models.backbones import BACKBONES
from pemma.models.networks import set_memory_format
from pemma.models.portable import PortableStateError, load_trained, read_metadata, save_trained


def _outputs(model, method, roi):
    model.eval()
    with torch.no_grad():
        return {s: model(*inputs(s, roi)) for s in method.inputs()}


def _trained(name, backbone, cfg=None):
    """A method's model after one training step per training subset (so every adapter is non-zero)."""
    cfg = cfg or CFGS[backbone]
    method = METHODS.get(name)()
    torch.manual_seed(1)
    built = build_method(name, cfg, base_model(backbone))
    for subset in method.train_schedule(cfg)[0]:
        one_step(built.model, (subset,), cfg.model.roi)
    return method, built


def test_swin_split_forward_is_monai_swin_unetr():
    cfg = CFGS["swin-unetr"]
    net = base_model("swin-unetr").eval()
    x = torch.rand(1, 1, *cfg.model.roi)
    with torch.no_grad():
        torch.testing.assert_close(net(x), SwinUNETR.forward(net, x), atol=0, rtol=0)


def test_pemma_swin_starts_as_the_ct_base_on_ct():
    """The merge starts as identity on CT and the CT adapter's residual at zero: CT input = the base."""
    cfg = resolve({"profile": "ci", "backbone": "swin-unetr", "adapter": {"beta": "absent"}})
    base = copy.deepcopy(base_model("swin-unetr")).eval()
    model = METHODS.get("pemma-lora")().create(base, cfg).model.eval()
    set_memory_format(base, cfg.model.channels_last)  # the same convolution kernels on both sides
    ct, _ = inputs("ct", cfg.model.roi)
    with torch.no_grad():
        torch.testing.assert_close(model(ct, None), base(ct), atol=1e-6, rtol=1e-6)


def test_swin_adapter_layer_ablation_fills_the_missing_modality_with_zeros():
    """adapter.swin_single=zeros: no modality adapters to train; one modality fills its half of the
    merge and the other half is zeros, so CT alone still starts as the CT base and PET alone is the
    merge of (0, PET) however the merge has been trained."""
    cfg = resolve(
        {"profile": "ci", "backbone": "swin-unetr", "adapter": {"beta": "absent", "swin_single": "zeros"}}
    )
    base = copy.deepcopy(base_model("swin-unetr")).eval()
    built = METHODS.get("pemma-lora")().create(base, cfg)
    assert not any(".ct." in n or ".pet." in n for n in built.trained if n.startswith("fusion."))
    with_adapters = METHODS.get("pemma-lora")().create(
        copy.deepcopy(base_model("swin-unetr")), CFGS["swin-unetr"]
    )
    assert any(n.startswith("fusion.pet.") for n in with_adapters.trained)
    model = built.model.eval()
    set_memory_format(base, cfg.model.channels_last)
    ct, pet = inputs("ctpet", cfg.model.roi)
    with torch.no_grad():
        torch.testing.assert_close(model(ct, None), base(ct), atol=1e-6, rtol=1e-6)
        model.fusion.merge.weight.normal_()  # a merge that reads PET, as after training
        tokens = torch.rand(1, model.fusion.merge.in_channels // 2, 2, 2, 2)
        expected = model.fusion.merge(torch.cat([torch.zeros_like(tokens), tokens], dim=1))
        torch.testing.assert_close(model.fusion(None, tokens), expected, atol=0, rtol=0)
    one_step(model.train(), ("pet",), cfg.model.roi)  # PET-only batches train the merge and PET path


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_qkv_split_keeps_outputs_and_fuses_back(backbone):
    cfg = CFGS[backbone]
    net = BACKBONES.get(backbone).build(cfg.model, 1).eval()
    x = torch.rand(1, 1, *cfg.model.roi)
    with torch.no_grad():
        before = net(x)
        names = split_qkv(net, BACKBONES.get(backbone).lora_targets["qkv"])
        after = net(x)
    assert names and all(isinstance(net.get_submodule(n), SplitQKV) for n in names)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)
    assert fuse_qkv(net) == len(names)
    assert not any(isinstance(m, SplitQKV) for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("name", "backbone"), MATRIX)
def test_saved_trained_state_loads_onto_a_fresh_base_with_identical_outputs(name, backbone, tmp_path):
    cfg = CFGS[backbone]
    method, built = _trained(name, backbone)
    expected = _outputs(built.model, method, cfg.model.roi)
    path = tmp_path / "trained.safetensors"
    size = save_trained(built.model, built.trained, path, {"method": name, "backbone": backbone})
    assert size == path.stat().st_size
    assert read_metadata(path)["method"] == name

    torch.manual_seed(99)  # whatever the fresh model's random init, the file must restore the result
    fresh = build_method(name, cfg, base_model(backbone))
    load_trained(fresh.model, fresh.trained, path)
    got = _outputs(fresh.model, method, cfg.model.roi)
    for subset in expected:
        torch.testing.assert_close(got[subset], expected[subset], atol=0, rtol=0)


def test_a_trained_state_is_refused_by_another_base_or_method(tmp_path):
    cfg = CFGS["unetr"]
    method, built = _trained("pemma-lora", "unetr")
    path = tmp_path / "lora.safetensors"
    save_trained(built.model, built.trained, path, {"method": "pemma-lora", "backbone": "unetr"})

    torch.manual_seed(5)
    other_base = BACKBONES.get("unetr").build(cfg.model, 1)
    fresh = method.create(other_base, cfg)
    with pytest.raises(PortableStateError, match="different frozen weights"):
        load_trained(fresh.model, fresh.trained, path)

    dora = METHODS.get("pemma-dora")().create(base_model("unetr"), cfg)
    with pytest.raises(PortableStateError, match="trainable set"):
        load_trained(dora.model, dora.trained, path)

    rank4 = method.create(base_model("unetr"), resolve({"profile": "ci", "adapter": {"rank": 4}}))
    with pytest.raises(PortableStateError, match="shapes differ"):
        load_trained(rank4.model, rank4.trained, path)

    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(PortableStateError, match="junk.safetensors"):
        load_trained(fresh.model, fresh.trained, tmp_path / "junk.safetensors")

    data = bytearray(path.read_bytes())  # flipped bytes in the tensors load silently without the digest
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    path.write_bytes(bytes(data))
    with pytest.raises(PortableStateError, match="lora.safetensors: its contents differ"):
        load_trained(method.create(base_model("unetr"), cfg).model, built.trained, path)


MERGEABLE = [
    on_backbone(name, backbone, targets, backbone=backbone)
    for backbone in BACKBONES.names()
    for name, targets in [
        ("pemma-lora", "qkv"),
        ("pemma-dora", "qkv"),
        ("pemma-lora", "qv"),
        ("pemma-dora", "attn-mlp"),
        ("early-fusion-lora", "qkv"),
    ]
]


@pytest.mark.parametrize(("name", "backbone", "targets"), MERGEABLE)
def test_merged_adapters_match_unmerged_and_leave_plain_monai(name, backbone, targets):
    cfg = resolve({"profile": "ci", "backbone": backbone, "adapter": {"targets": targets}})
    method, built = _trained(name, backbone, cfg)
    model = built.model
    expected = _outputs(model, method, cfg.model.roi)
    tuners = sum(isinstance(m, BaseTunerLayer) for m in model.modules())
    folded = merge_adapters(model)
    assert tuners > 0 and folded["adapters"] == tuners
    assert folded["qkv"] == (len(built.adapted_modules) // 2 if targets == "qv" else 0)
    assert not any(isinstance(m, BaseTunerLayer | SplitQKV | WidenedConv) for m in model.modules())
    net = model.base if hasattr(model, "base") else model.net
    assert isinstance(net, UNETR if backbone == "unetr" else SwinUNETR)
    got = _outputs(model, method, cfg.model.roi)
    for subset in expected:
        torch.testing.assert_close(got[subset], expected[subset], atol=1e-5, rtol=1e-4)
