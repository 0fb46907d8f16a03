"""Decoupled training of the box classifier (Kang et al., ICLR 2020): cRT, LWS, tau-norm; BALMS;
Class-Balanced Distillation (CBD, Iscen et al., BMVC 2021: box head trained on, distilled).

``MODEL.DECOUPLE.METHOD`` selects a method of :data:`LT_DECOUPLE_REGISTRY`;
:func:`apply_decoupling` prepares a freshly built model, ``LTTrainer`` runs the classifier-only
stage-2 step (:class:`DecoupledTrainer`, with the Meta Sampler's :class:`MetaSamplerLearner`
for BALMS) and re-initialises after loading stage-1 weights (:func:`stage1_load_guard`). See
docs/decouple.md.
"""
from . import method_cbd as _cbd  # registration  # noqa: F401
from . import method_crt as _crt  # registration  # noqa: F401
from . import method_disalign as _disalign  # registration  # noqa: F401
from . import method_finetune as _finetune  # registration  # noqa: F401
from . import method_lws as _lws  # registration  # noqa: F401
from . import method_none as _none  # registration  # noqa: F401
from . import method_tau_norm as _tau_norm  # registration  # noqa: F401
from .classifiers import (
    LWSLinear,
    TauNormLinear,
    find_box_predictors,
    reinit_classifier_,
    tau_normalize,
)
from .features import FrozenBoxBatch, frozen_box_batch, unwrap_model
from .freeze import (
    freeze_all_but,
    frozen_module_roots,
    keep_frozen_in_eval,
    prefix_matches,
)
from .method_cbd import (
    BoxFeatureTeacher,
    ClassBalancedDistillation,
    DistilledStep,
    cbd_distillation_loss,
)
from .method_crt import ClassifierRetraining
from .method_disalign import DisAlignLinear, DistributionAlignment, disalign_logits
from .method_finetune import ClassifierFineTuning
from .method_lws import LearnableWeightScaling
from .method_none import NoDecoupling
from .method_tau_norm import TauNormalization
from .registry import (
    LT_DECOUPLE_REGISTRY,
    DecoupleMethod,
    apply_decoupling,
    build_decouple_method,
    register_decouple_method,
)
from .balms import MetaSamplerLearner
from .feature_bank import ClassBalancedFeatureBank
from .sweep import (
    SWEEP_METRICS,
    check_sweep_inputs,
    sweep_box_predictor,
    sweep_metrics,
    write_sweep_table,
)
from .trainer import (
    DecoupledStep,
    DecoupledTrainer,
    build_decoupled_trainer,
    check_decoupled_training,
    check_stage2_classifier,
    check_stage1_weights,
    stage1_load_guard,
)

__all__ = [
    "LT_DECOUPLE_REGISTRY",
    "DecoupleMethod",
    "register_decouple_method",
    "build_decouple_method",
    "apply_decoupling",
    "NoDecoupling",
    "ClassifierRetraining",
    "ClassifierFineTuning",
    "LearnableWeightScaling",
    "DistributionAlignment",
    "DisAlignLinear",
    "disalign_logits",
    "TauNormalization",
    "ClassBalancedDistillation",
    "BoxFeatureTeacher",
    "DistilledStep",
    "cbd_distillation_loss",
    "LWSLinear",
    "TauNormLinear",
    "tau_normalize",
    "find_box_predictors",
    "reinit_classifier_",
    "freeze_all_but",
    "keep_frozen_in_eval",
    "frozen_module_roots",
    "prefix_matches",
    "FrozenBoxBatch",
    "frozen_box_batch",
    "unwrap_model",
    "DecoupledStep",
    "DecoupledTrainer",
    "build_decoupled_trainer",
    "MetaSamplerLearner",
    "ClassBalancedFeatureBank",
    "check_decoupled_training",
    "check_stage2_classifier",
    "check_stage1_weights",
    "stage1_load_guard",
    "SWEEP_METRICS",
    "check_sweep_inputs",
    "sweep_box_predictor",
    "sweep_metrics",
    "write_sweep_table",
]
