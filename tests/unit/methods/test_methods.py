"""Every registered method: builds, trains one step, trains exactly its declared set, takes its inputs."""

import re

import pytest
import torch
from helpers.models import CFG, CFGS, MATRIX, Batches, base_model, inputs, one_step

from pemma.config import TrainConfig, resolve
from pemma.methods import METHODS, build_method
from pemma.modalities import SUBSETS, UnsupportedModalityError
from pemma.models.backbones import BACKBONES
from pemma.training.loop import train


@pytest.fixture(scope="module")
def base():
    return base_model("unetr")


@pytest.mark.parametrize(("name", "backbone"), MATRIX)
def test_method_trains_exactly_its_declared_set(name, backbone):
    cfg, base = CFGS[backbone], base_model(backbone)
    method = METHODS.get(name)()
    built = build_method(name, cfg, base)
    model = built.model
    patterns = method.trainable_patterns(cfg)
    declared = {
        n for n, _ in model.named_parameters() if patterns is None or any(re.search(p, n) for p in patterns)
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    subsets, _ = method.train_schedule(cfg)
    reached: set[str] = set()
    # One step per training subset, so every declared parameter is reached at least once.
    for subset in subsets:
        for p in model.parameters():
            p.grad = None
        one_step(model, (subset,), cfg.model.roi)
        got_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert got_grad <= declared, f"{name}: gradients reached undeclared {sorted(got_grad - declared)[:5]}"
        reached |= got_grad
    # MONAI's transformer blocks carry a cross-attention norm that forward never uses: no gradient.
    used = {n for n in declared if "norm_cross_attn" not in n}
    assert reached == used, f"{name}: declared but never trained: {sorted(used - reached)[:5]}"
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = set(before) - declared
    assert not (changed & frozen), f"{name}: frozen parameters changed: {sorted(changed & frozen)[:5]}"
    assert changed, f"{name}: nothing changed after a training step"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == declared
    assert sorted(built.trained) == sorted(declared)


def test_pemma_lora_freezes_the_ct_network_and_adapts_every_attention(base):
    method = METHODS.get("pemma-lora")()
    built = method.create(base, CFG)
    trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert built.adapted_modules == [f"base.vit.blocks.{i}.attn.qkv" for i in range(CFG.model.num_layers)]
    assert all(re.match(r"(pet_embedding|pet_skips|betas)", n) or ".lora_" in n for n in trainable)
    assert any(n.startswith("pet_embedding.") for n in trainable)
    assert len(built.model.pet_skips) == 4 and built.model.betas.requires_grad
    # The CT backbone, CT skip encoders and decoder stay frozen.
    for n, p in built.model.base.named_parameters():
        assert p.requires_grad == (".lora_" in n), n
    # The base handed in is not modified (methods work on a copy).
    assert not any("lora" in n for n, _ in base.named_parameters())


def test_pemma_dora_uses_weight_decomposition(base):
    built = METHODS.get("pemma-dora")().create(base, CFG)
    assert any("lora_magnitude_vector" in n for n, p in built.model.named_parameters() if p.requires_grad)


def test_pemma_with_frozen_adapters_is_the_base_on_ct_when_pet_pathway_is_absent(base):
    cfg = resolve({"profile": "ci", "adapter": {"beta": "absent", "dropout": 0.0}})
    built = METHODS.get("pemma-lora")().create(base, cfg).model.eval()
    ct, _ = inputs("ct")
    with torch.no_grad():
        # LoRA B starts at zero and no PET skip exists: CT-only output equals the base's.
        torch.testing.assert_close(built(ct, None), base.eval()(ct), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "backbone"), MATRIX)
def test_method_accepts_its_inputs_and_refuses_others(name, backbone):
    cfg, base = CFGS[backbone], base_model(backbone)
    method = METHODS.get(name)()
    model = build_method(name, cfg, base).model.eval()
    assert type(model).accepts == method.inputs()  # the declaration `methods` lists is the model's own
    for subset in SUBSETS:
        ct, pet = inputs(subset, cfg.model.roi)
        if subset in method.inputs():
            with torch.no_grad():
                out = model(ct, pet)
            assert out.shape == (1, 3, *cfg.model.roi)
        else:
            with pytest.raises(UnsupportedModalityError, match="accepts"):
                model(ct, pet)
    with pytest.raises(UnsupportedModalityError, match="no input"):
        model(None, None)


def test_pemma_trainable_share_is_small_at_paper_scale():
    """At the paper's UNETR (hidden 768, 12 layers, feature 48) PEMMA-LoRA trains ~8-9% of early fusion's."""
    cfg = resolve({"profile": "paper"})
    base = BACKBONES.get("unetr").build(cfg.model, 1)
    lora = METHODS.get("pemma-lora")().create(base, cfg).model
    ef = METHODS.get("early-fusion")().create(None, cfg).model
    share = sum(p.numel() for p in lora.parameters() if p.requires_grad) / sum(
        p.numel() for p in ef.parameters()
    )
    assert 0.05 < share < 0.12, share


def test_pemma_continual_stage_updates_only_the_adapters(base):
    """A CT-only continual stage must leave the PET pathway (embedding, skips, betas) untouched."""
    from pemma.methods import set_trainable

    method = METHODS.get("pemma-lora")()
    model = method.create(base, CFG).model
    one_step(model, ("ctpet",))  # adaptation: make LoRA B non-zero so every adapter weight moves next
    set_trainable(model, method.continual_patterns(CFG))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model, (method.stage_subset("ct"),))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n for n in changed), sorted(changed)[:5]
    assert method.stage_subset("ct") == "ct" and METHODS.get("ct-only").stage_subset("ctpet") == "ct"
    with pytest.raises(UnsupportedModalityError):
        METHODS.get("ct-only").stage_subset("pet")


def test_modality_curriculum_starts_with_both_modalities():
    from pemma.modalities import subset_of
    from pemma.models.base import SegmentationModel

    class Recorder(SegmentationModel):
        accepts = SUBSETS

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 3, 1)
            self.seen = []

        def segment(self, ct, pet):
            self.seen.append(subset_of(ct, pet))
            return self.conv(ct if ct is not None else pet)

    model = Recorder()
    budget = TrainConfig(steps=30, batch_size=1, lr=1e-3, warmup_steps=0, modality_warmup_steps=10)
    train(
        model,
        Batches(),
        budget,
        subsets=SUBSETS,
        probabilities=(0.2, 0.4, 0.4),
        seed=0,
        device=torch.device("cpu"),
    )
    assert model.seen[:10] == ["ctpet"] * 10
    assert {"ct", "pet"} <= set(model.seen[10:])


@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize(("targets", "per_block"), [("qkv", 1), ("qv", 2), ("attn", 2), ("attn-mlp", 4)])
def test_adapter_target_sets_adapt_exactly_their_encoder_layers(backbone, targets, per_block):
    cfg = resolve({"profile": "ci", "backbone": backbone, "adapter": {"targets": targets}})
    built = METHODS.get("pemma-lora")().create(base_model(backbone), cfg)
    blocks = cfg.model.num_layers if backbone == "unetr" else sum(cfg.model.swin_depths)
    assert len(built.adapted_modules) == per_block * blocks
    prefix = "base." + BACKBONES.get(backbone).encoder_prefix
    assert all(m.startswith(prefix) for m in built.adapted_modules)
    if targets == "qv":
        assert {m.rsplit(".", 1)[1] for m in built.adapted_modules} == {"q", "v"}


def test_an_adapter_pattern_outside_the_encoder_is_refused(base):
    from pemma.models.adapters import AdapterTargetError, inject_lora

    net = BACKBONES.get("unetr").build(CFG.model, 1)
    loose = {"qkv": r"(vit\.blocks\.0\.attn\.qkv|decoder2\.transp_conv\.conv)"}
    with pytest.raises(AdapterTargetError, match="outside the encoder"):
        inject_lora(net, loose, CFG.adapter, dora=False, encoder_prefix="vit.")
    nothing = {"qkv": r"vit\.blocks\.\d+\.attn\.nothing"}
    with pytest.raises(AdapterTargetError, match="matches no module"):
        inject_lora(net, nothing, CFG.adapter, dora=False, encoder_prefix="vit.")


@pytest.mark.parametrize(("name", "backbone"), MATRIX)
def test_every_method_and_backbone_feeds_a_survival_head(name, backbone):
    """The prognosis head hooks each model's bottleneck (two of them in late fusion) and trains with it."""
    from pemma.models.prognosis import PrognosisModel

    cfg, base = CFGS[backbone], base_model(backbone)
    method = METHODS.get(name)()
    built = build_method(name, cfg, base)
    spec = BACKBONES.get(backbone)
    model = PrognosisModel(built.model, spec.bottleneck, spec.bottleneck_dim(cfg.model), variables=3)
    subset = method.inputs()[0]
    ct, pet = inputs(subset, cfg.model.roi)
    values, present = torch.randn(1, 3), torch.tensor([[True, False, True]])
    risk = model(ct, pet, values, present)
    assert risk.shape == (1,) and torch.isfinite(risk).all()
    risk.sum().backward()
    assert model.head.image[1].weight.grad is not None and model.head.ehr.missing.grad is not None
    # Stopping the forward at the bottleneck changes no risk and no gradient (the decoder's output
    # never reached the head), on every input the method accepts.
    for subset in method.inputs():
        ct, pet = inputs(subset, cfg.model.roi)
        seen = {}
        for stop in (True, False):
            model.zero_grad(set_to_none=True)
            model.stop_at_bottleneck = stop
            torch.manual_seed(3)  # the same dropout masks in the adapters
            risk = model(ct, pet, values, present)
            risk.sum().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            seen[stop] = risk.detach(), grads
        torch.testing.assert_close(seen[True][0], seen[False][0], rtol=0, atol=0)
        assert seen[True][1].keys() == seen[False][1].keys()
        for n, g in seen[False][1].items():
            torch.testing.assert_close(seen[True][1][n], g, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("backbone", ["unetr", "swin-unetr"])
def test_pet_route_branch_leaves_the_frozen_ct_skip_encoder_out_of_pet_only_inference(backbone):
    """`adapter.pet_route: branch`: with PET alone, the input-level skip is the PET branch's alone, so
    changing the frozen CT encoder there changes nothing; the published `shared` route reads it."""
    outputs = {}
    for route in ("shared", "branch"):
        cfg = resolve(
            {"profile": "ci", "backbone": backbone, "adapter": {"pet_route": route, "dropout": 0.0}}
        )
        model = METHODS.get("pemma-lora")().create(base_model(backbone), cfg).model.eval()
        _, pet = inputs("pet", cfg.model.roi)
        ct, _ = inputs("ct", cfg.model.roi)
        with torch.no_grad():
            before, both = model(None, pet), model(ct, pet)
            for p in model.base.encoder1.parameters():
                p.add_(0.5)
            outputs[route] = (before, model(None, pet), both, model(ct, pet))
    shared, branch = outputs["shared"], outputs["branch"]
    assert not torch.allclose(shared[0], shared[1])  # shared: the CT encoder reads PET
    torch.testing.assert_close(branch[0], branch[1])  # branch: it does not
    assert not torch.allclose(branch[2], branch[3])  # with CT present both routes use it
    torch.testing.assert_close(shared[2], branch[2])  # and CT+PET is the same model either way


@pytest.mark.parametrize(("name", "backbone"), MATRIX)
def test_no_trainable_bias_is_cancelled_by_the_normalisation_after_it(name, backbone):
    """Issue 31, item 15: a convolution's bias right before an instance or batch norm is subtracted
    again, so it cannot learn; counting it as trainable overstated the trainable set (Swin's modality
    adapters had one each, PET's included)."""
    model = build_method(name, CFGS[backbone], base_model(backbone)).model
    norms = (torch.nn.InstanceNorm3d, torch.nn.BatchNorm3d)
    inert = []
    for prefix, module in model.named_modules():
        children = list(module.named_children())
        for (conv_name, conv), (_, norm) in zip(children, children[1:], strict=False):
            learns = isinstance(conv, torch.nn.Conv3d) and conv.bias is not None and conv.bias.requires_grad
            if learns and isinstance(norm, norms):
                inert.append(f"{prefix}.{conv_name}.bias")
    assert not inert, f"{name} on {backbone} trains biases a norm cancels: {inert}"
