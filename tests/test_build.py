"""build_model: the one place that turns `config.model` into the model's parts."""

import dataclasses

import keras

from simclr_tf2.build import build_model
from simclr_tf2.config import Config, ModelConfig
from simclr_tf2.models.simclr import SimCLRModel

# A value other than the default for every model setting.
CHANGED = dict(
    resnet_depth=18,
    width_multiplier=0.25,
    sk_ratio=0.0625,
    se_ratio=0.25,
    global_bn=False,
    batch_norm_decay=0.5,
    proj_head_mode="linear",
    proj_out_dim=16,
    num_proj_layers=2,
    ft_proj_selector=1,
    temperature=0.5,
    hidden_norm=False,
    lineareval_while_pretraining=False,
    fine_tune_after_block=2,
    zero_init_logits_layer=True,
    kernels="plain",
)


def batch_norms(layer) -> list:
    return [n for n in layer._flatten_layers() if isinstance(n, keras.layers.BatchNormalization)]


def test_every_model_setting_reaches_the_model():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(ModelConfig)}
    config = Config.from_flags(image_size=8, train_mode="finetune", **CHANGED)
    model = build_model(config, 3)
    encoder, head, batch_norm = model.encoder, model.projection_head, model.encoder.batch_norm
    assert head.batch_norm == batch_norm
    reached = dict(
        resnet_depth=encoder.depth,
        width_multiplier=encoder.width_multiplier,
        sk_ratio=encoder.sk_ratio,
        se_ratio=encoder.se_ratio,
        global_bn=batch_norm.synchronized,
        batch_norm_decay=batch_norm.momentum,
        kernels=batch_norm.kernels,
        proj_head_mode=head.proj_head_mode,
        proj_out_dim=head.proj_out_dim,
        num_proj_layers=head.num_proj_layers,
    )
    for name in set(CHANGED) - set(reached):
        reached[name] = getattr(model, name)
    assert reached == CHANGED


def test_one_spec_builds_every_batch_norm():
    """--global_bn, --batch_norm_decay and --kernels reach every batch norm of the model
    (ResNet-D stem, selective kernels, blocks, shortcuts, projection head) through
    one BatchNormSpec, and stay there through get_config."""
    config = Config.from_flags(
        resnet_depth=50,
        width_multiplier=0.0625,
        image_size=64,
        sk_ratio=0.0625,
        global_bn=False,
        batch_norm_decay=0.5,
        kernels="plain",
    )
    model = build_model(config, None)
    norms = batch_norms(model)
    names = {n.name for n in norms}
    assert {"initial_batch_normalization_a", "attention_batch_normalization"} <= names
    assert {"shortcut_batch_normalization", "batch_normalization_3"} <= names
    assert len(batch_norms(model.projection_head)) == 3
    # From get_config (unbuilt: the encoder's norms exist, the head's come with build).
    clone = SimCLRModel.from_config(model.get_config())
    assert len(batch_norms(clone)) == len(batch_norms(model.encoder))
    assert clone.projection_head.batch_norm == model.projection_head.batch_norm
    for n in norms + batch_norms(clone):
        # The defaults are synchronised, 0.9 and the fused layer (on this CPU).
        assert n.momentum == 0.5 and not n.synchronized, n.name
        assert type(n) is keras.layers.BatchNormalization, n.name
