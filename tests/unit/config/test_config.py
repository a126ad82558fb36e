import pytest

from pemma.config import ConfigError, parse_override, resolve
from pemma.methods import METHODS
from pemma.registry import Registry, RegistryError


def test_registry_aliases_duplicates_and_did_you_mean():
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1, aliases=("a",))
    assert reg.get("a") == 1
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("a", 2)
    with pytest.raises(RegistryError, match="did you mean 'alpha'"):
        reg.get("alpah")


def test_unknown_method_suggests_the_close_name():
    with pytest.raises(RegistryError, match="did you mean 'pemma-lora'"):
        METHODS.get("pemma-lorra")


def test_precedence_profile_then_layers_then_overrides():
    cfg = resolve({"profile": "ci"})
    assert cfg.model.hidden_size == 32  # from the ci profile
    cfg = resolve({"profile": "ci", "train": {"steps": 7}}, parse_override("train.steps=9"))
    assert cfg.train.steps == 9
    assert resolve({"profile": "paper"}).model.hidden_size == 768


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stpes=3", "did you mean 'train.steps'"),
        ("train.modality_dropout=[0.5,0.5,0.5]", "sum to 1"),
        ("model.num_heads=5", "not divisible"),
        ("adapter.beta=sometimes", "learned, fixed or absent"),
        ("profile=huge", "unknown profile"),
        ("data.adapt_centre=CHUS", "also a CT pretraining centre"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve(parse_override(override))


def test_config_identity_ignores_labels_but_not_values():
    a = resolve({"profile": "ci", "suite": "x", "data": {"root": "/a"}})
    b = resolve({"profile": "ci", "suite": "y", "data": {"root": "/b"}})
    c = resolve({"profile": "ci", "train": {"lr": 0.1}})
    assert a.identity() == b.identity()
    assert a.identity() != c.identity()


def test_centre_plan_file_sets_the_centres(tmp_path):
    default, shipped = resolve({}).data, resolve({"data": {"plan": "hecktor2022"}}).data
    centres = ("pretrain_centres", "adapt_centre", "continual_centres")
    assert [getattr(shipped, c) for c in centres] == [getattr(default, c) for c in centres]
    plan = tmp_path / "plan.yaml"
    plan.write_text("pretrain: [CHUM]\nadapt: HGJ\ncontinual: [MDA]\n")
    cfg = resolve({"data": {"plan": str(plan)}})
    assert (cfg.data.pretrain_centres, cfg.data.adapt_centre, cfg.data.continual_centres) == (
        ("CHUM",),
        "HGJ",
        ("MDA",),
    )
    plan.write_text("pretrain: CHUM\n")
    with pytest.raises(ConfigError, match="plan.yaml"):
        resolve({"data": {"plan": str(plan)}})


def test_identity_holds_only_non_default_values_so_new_options_keep_old_keys():
    cfg = resolve({"profile": "ci"})
    assert "adapter.alpha_ratio" not in cfg.identity()  # an option at its default does not enter the key
    assert cfg.identity()["model.hidden_size"] == 32  # a profile value does
    assert resolve({"profile": "ci", "adapter": {"alpha_ratio": 2}}).identity()["adapter.alpha_ratio"] == 2.0


def test_the_paper_profile_follows_the_public_recipe_and_paper_harness_keeps_ours():
    paper, ours = resolve({"profile": "paper"}), resolve({"profile": "paper-harness"})
    assert (paper.train.lr, paper.train.weight_decay, paper.train.batch_size) == (1e-4, 1e-5, 2)
    assert paper.train.class_weights == (1.0, 1.0, 1.0) and paper.train.steps == 18000
    assert (paper.adapter.rank, paper.adapter.lora_alpha, paper.adapter.targets) == (4, 8.0, "qv")
    assert paper.model.roi == (96, 96, 96) and paper.pretrain.lr == 3e-4
    assert ours.train.class_weights == (1.0, 2.0, 5.0)
    assert (ours.adapter.rank, ours.adapter.lora_alpha, ours.adapter.targets) == (8, 16.0, "qkv")
    assert ours.model == paper.model and ours.train.steps == paper.train.steps  # included from paper


def test_each_config_field_declares_the_keys_it_is_part_of():
    from pemma.config import ADAPTATION_KEY, KEYS, RUN_KEY, key_scopes

    scopes = key_scopes()
    labels = {k for k, s in scopes.items() if not s}
    assert labels == {
        "suite",
        "data.root",
        "data.plan",
        "train.checkpoint_every",
        "train.activation_checkpointing",
        "train.loader_workers",  # crops seeded per sample: the same batches for any number of workers
        "eval.conditions",  # what a finished unit evaluates more: scored from its saved state
        "eval.predictions",  # writing the prediction files never changes a number
    }
    assert {k for k, s in scopes.items() if s == {RUN_KEY}} == {
        k for k in scopes if k.startswith("continual.")
    }
    assert all(s == KEYS for k, s in scopes.items() if k not in labels and not k.startswith("continual."))
    base = resolve({"profile": "ci"})
    moved = resolve({"profile": "ci", "suite": "other", "train": {"checkpoint_every": 7}})
    assert base.identity() == moved.identity(), "a label is part of no key"
    shifted = resolve({"profile": "ci", "eval": {"conditions": ["pet-shift"]}})
    assert shifted.identity() == base.identity(), "adding a test-time condition does not retrain"
    stages = resolve({"profile": "ci", "continual": {"steps": 3}})
    assert stages.identity() != base.identity(), "continual stages are part of the run key"
    assert stages.identity(ADAPTATION_KEY) == base.identity(ADAPTATION_KEY), "but not of the adaptation's"


def test_a_model_revision_changes_the_keys_of_the_methods_that_build_it_and_no_other():
    """Swin's PEMMA wrapper lost an inert bias (revision 1): its units get new keys, so a finished run of
    the old model is never taken for the new one; UNETR's and every non-PEMMA method's keys stay."""
    from pemma.tasks.segmentation.adapted import adaptation_key
    from pemma.tracking import run_key

    revisions = {
        (name, backbone): METHODS.get(name).revision(backbone)
        for name in METHODS.names()
        for backbone in ("unetr", "swin-unetr")
    }
    changed = {unit for unit, revision in revisions.items() if revision}
    assert changed == {(m, "swin-unetr") for m in ("pemma-lora", "pemma-dora", "full-finetune")}
    cfg = resolve({"profile": "ci", "method": "pemma-lora", "backbone": "swin-unetr"})
    assert run_key(cfg, "data", 0) == run_key(cfg, "data")
    assert run_key(cfg, "data", 1) != run_key(cfg, "data", 0)
    assert adaptation_key(cfg, "data", ["a"], 1) != adaptation_key(cfg, "data", ["a"])
