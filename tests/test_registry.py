"""The one registry helper (lt_det.registry) and the keys that read it."""
import pytest

from lt_det.errors import LTDetError
from lt_det.registry import Registry, UnknownChoiceError


def test_register_lookup_and_choices():
    reg = Registry("T", config_key="A.KEY", what="thing")

    @reg.register("beta", name_attr="thing_name")
    class Beta:
        pass

    reg.register("alpha")(len)
    assert reg.get("beta") is Beta and Beta.thing_name == "beta"
    assert reg.choices() == ["alpha", "beta"] and "alpha" in reg and len(reg) == 2
    assert dict(iter(reg)) == {"beta": Beta, "alpha": len}
    assert list(reg.mapping()) == ["beta", "alpha"]  # registration order
    with pytest.raises(UnknownChoiceError) as info:
        reg.get("gamma")
    # One error type for every lookup: bad user input (LTDetError) and a failed lookup (KeyError).
    assert isinstance(info.value, LTDetError) and isinstance(info.value, KeyError)
    assert str(info.value) == "Unknown thing 'gamma' (A.KEY). Valid names: ['alpha', 'beta']."
    reg.register("beta")(Beta)  # the same object again is fine
    with pytest.raises(LTDetError, match="'beta' .*already registered"):
        reg.register("beta")(len)


def test_config_choices_are_the_registries():
    from lt_det.benchmark import BENCHMARK_METHODS, METHODS
    from lt_det.data.samplers import LT_SAMPLER_REGISTRY
    from lt_det.decouple import LT_DECOUPLE_REGISTRY
    from lt_det.engine import config_choices
    from lt_det.evaluation import LT_LVIS_EVAL_BACKEND_REGISTRY
    from lt_det.modeling.losses import LT_CLS_LOSS_REGISTRY

    choices = config_choices()
    assert choices["MODEL.ROI_BOX_HEAD.CLS_LOSS"] == LT_CLS_LOSS_REGISTRY.choices()
    assert choices["DATALOADER.SAMPLER_TRAIN"] == LT_SAMPLER_REGISTRY.choices()
    assert choices["MODEL.DECOUPLE.METHOD"] == LT_DECOUPLE_REGISTRY.choices()
    assert choices["TEST.LVIS.BACKEND"] == LT_LVIS_EVAL_BACKEND_REGISTRY.choices() == [
        "fast",
        "lvis",
    ]
    assert "finetune" in choices["MODEL.DECOUPLE.METHOD"]
    assert sorted(METHODS) == BENCHMARK_METHODS.choices()
