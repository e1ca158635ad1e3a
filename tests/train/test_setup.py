"""Build once from config: a fresh finetune from a pretrained directory (ours or PyTorch) holds exactly the stored
weights yet runs the attention backend and remat the run asks for, in every layer, as its resumed run and its plan
do; a model trained from scratch starts from the position table and the kernel scale its config names."""

import jax
import numpy as np
import pytest
from flax import nnx

from tlv_jax import plan
from tlv_jax.config import LLMConfig, VisionConfig
from tlv_jax.convert.jax2torch import convert
from tlv_jax.convert.orbax_io import ParamsReader, inference_defaults
from tlv_jax.models.layers.linear import Dense
from tlv_jax.models.siglip import sincos_2d
from tlv_jax.train import export, setup
from tlv_jax.train.config_file import load_config

from . import tiny_run

CONFIGS = tiny_run.ROOT / "configs"
NO_DATA = setup.DataSource(make=lambda: iter(()), size=8)  # these runs are built, never stepped
RUN_SETTINGS = dict(attn_impl="xla", remat="dots", vision_remat=True)  # none of them a stored model's default


def scratch_config():
    config = load_config(CONFIGS / "base.py")
    config.model.update(dict(init="scratch", num_queries=8, group=4, num_resampler_layers=1, max_length=160,
                             dtype="float32", remat="", vision_feature_layer=-1))
    config.model.scratch = dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=32, patch_size=8,
                    use_head=False),
        llm=dict(family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=8, rope_theta=10000.0, tie_word_embeddings=True),
        connector=dict(), posemb_init="sincos2d")
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A pretrain-stage output in our layout and the same model in the PyTorch layout."""
    root = tmp_path_factory.mktemp("pretrained")
    config = scratch_config()
    source = setup.model_source(config)
    ours = export.save_model_dir(setup.build_model(config, source), source.config, "", root / "ours", "test",
                                 inference_defaults("qwen2_base", 4, 0))
    return {"ours": ours, "pytorch": convert(ours, root / "pytorch", progress=False)}


def finetune_config(pretrained_path):
    config = load_config(CONFIGS / "finetune_qwen25_3b_group16.py")
    config.model.update(dict(pretrained_path=str(pretrained_path), num_queries=8, group=4, num_resampler_layers=1,
                             max_length=160, dtype="float32", **RUN_SETTINGS))
    config.train.update(dict(global_batch=8, micro_batch=8, num_steps=1))
    return config


def attention_backends(model):
    """Path -> backend of every module that attends (as the module holds it)."""
    return {path: getattr(node, name) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)
            for name in ("attn_impl", "impl") if isinstance(getattr(node, name, None), str)}


def component_settings(model):
    """Path -> (attention backend, remat) of every module built from a vision or decoder config."""
    return {path: (node.cfg.attn_impl, node.cfg.remat) for path, node in nnx.iter_graph(model)
            if isinstance(getattr(node, "cfg", None), (VisionConfig, LLMConfig))}


def run_model(run):
    return nnx.merge(run.graphdef, run.state.params, run.state.frozen, run.state.rest)


@pytest.mark.parametrize("layout", ["ours", "pytorch"])
def test_fresh_and_resumed_finetunes_run_the_configured_attention_and_remat_in_every_layer(
        pretrained, tmp_path, layout):
    config = finetune_config(pretrained[layout])
    fresh = setup.prepare(config, tmp_path, data=NO_DATA)
    fresh.checkpoints.save(0, fresh.state, force=True)
    fresh.checkpoints.close()
    resumed = setup.prepare(config, tmp_path, data=NO_DATA)
    resumed.checkpoints.close()
    assert (fresh.resumed_from, resumed.resumed_from) == (None, 0)

    cfg = fresh.source.config.model
    assert resumed.source.config.model == cfg == plan.model_config(config)  # resumed and planned: the same model
    for run in (fresh, resumed):
        model = run_model(run)
        backends = attention_backends(model)
        assert len(backends) == cfg.vision.num_layers + cfg.llm.num_layers + cfg.connector.num_layers
        assert set(backends.values()) == {"xla"}
        settings = component_settings(model)
        assert settings[("vision",)] == ("xla", True) and settings[("llm",)] == ("xla", "dots")
        assert {impl for impl, _ in settings.values()} == {"xla"}

    # The fresh run holds the stored weights, loaded into the model it built (float32: bit for bit).
    stored = ParamsReader(pretrained["ours"])
    loaded = nnx.to_flat_state(nnx.state(run_model(fresh), nnx.Param))
    assert len(loaded) == len(stored.keys())
    for path, value in loaded:
        np.testing.assert_array_equal(jax.device_get(value[...]), stored.get(tuple(path)), err_msg=str(path))


def test_a_scratch_model_starts_from_the_position_table_its_config_names():
    config = scratch_config()
    source = setup.model_source(config)
    assert source.config.model.vision.posemb_init == "sincos2d"
    model = setup.build_model(config, source)
    np.testing.assert_allclose(np.asarray(model.vision.pos_embed.embedding[...]), sincos_2d(4, 32), rtol=1e-6)


def test_a_scratch_model_draws_its_kernels_at_the_scale_its_config_names():
    """'normal': every dense kernel N(0, 0.02) (HF's init); 'fan_in': N(0, 1/fan_in), each kernel its own draw;
    anything else is refused naming the key."""
    def kernels(model):
        return {path: np.asarray(m.kernel[...]) for path, m in nnx.iter_modules(model) if isinstance(m, Dense)}

    config = scratch_config()
    normal = kernels(setup.build_model(config, setup.model_source(config)))
    config.model.scratch.kernel_init = "fan_in"
    fan_in = kernels(setup.build_model(config, setup.model_source(config)))
    assert normal.keys() == fan_in.keys() and len(fan_in) > 20  # vision, connector and decoder layers
    for path, k in fan_in.items():
        assert abs(normal[path].std() / 0.02 - 1) < 0.35, path
        assert abs(k.std() * k.shape[0] ** 0.5 - 1) < 0.35, path
    assert len({float(k.ravel()[0]) for k in fan_in.values()}) == len(fan_in)
    config.model.scratch.kernel_init = "xavier"
    with pytest.raises(ValueError, match=r"model.scratch.kernel_init='xavier': unknown kernel init 'xavier'; "
                                         r"expected one of"):
        setup.model_source(config)


def test_a_connector_other_than_the_stored_one_is_refused(pretrained):
    config = finetune_config(pretrained["ours"])
    config.model.group = 2
    with pytest.raises(ValueError, match=r"its connector is group \(8 queries, group 4\) but the config asks for "
                                         r"group \(8 queries, group 2\)"):
        setup.model_source(config)
