"""Is the synthetic data useful? Train the finding classifier under several data regimes and test
it on REAL held-out images (`keras-cxr utility`).

    from keras_cxr.utility import UtilityConfig, run_utility
    results = run_utility(UtilityConfig(model="saved_models/fs-gmvae", out="reports/fs-gmvae-utility"))

Regimes (the same classifier architecture, preset, seed, epochs and patient split every time):

- `real`: the real training split (baseline).
- `synthetic` (train on synthetic, test on real, "TSTR"): as many conditional samples as real
  training images; each sample's label vector is a whole real training label vector drawn with
  replacement (`keras_cxr.cooccurrence`), so prevalences AND co-occurrences are the real ones.
- `real+synthetic`: the real split plus synthetic images that top up every finding with fewer
  than `target_count` training positives: finding f gets target_count - n_f extra samples whose
  label vectors are real training vectors containing f (its co-findings come along).
- `real+oversampled`: the honest baseline for balancing: the SAME extra label vectors, but the
  real images they came from are repeated instead of generated. Both balanced regimes therefore
  have the same size and the same label distribution; only the pixels differ.

The classifier is built once and reset to the same initial state before every regime; the class
weights of its weighted BCE are those of the real training split in every regime, so the only
thing that changes between regimes is the training images. It is trained with early stopping (best epoch restored) on the real validation split
and scored on the real test split: AUROC per finding and its mean, with seeded image-level
bootstrap 95 % intervals (`keras_cxr.bootstrap`) and, for every regime, a paired bootstrap
interval for its mean AUROC minus the real-only one. A finding with no positive (or no negative)
test image has AUROC NaN, is left out of the mean and is listed.

Scaling: images stream through tf.data; synthetic images are generated batch by batch and written
to sharded TFRecords (PNG bytes + label vector) under OUT/training-sets/ (deleted at the end
unless `keep_synthetic`), never held in memory as a whole; the repeated real images of the
oversampling regime go through the same kind of shards, so both balanced regimes read their extra
images the same way. Progress bars for generation and training. The report folder (metrics.json, report.md,
figures/) is assembled under a temporary name and renamed into place at the end.

Layout: `config` (UtilityConfig), `plan` (splits, top-up plan, generator label columns), `shards`
(TFRecord shards and tf.data streams), `trainer` (the classifier of every regime), `run`
(`run_utility`); the report (markdown, figures) is `keras_cxr.utility_report`, beside
`keras_cxr.report`. Every public name is importable from `keras_cxr.utility`; importing it needs
numpy only (TensorFlow / Keras load inside the functions).
"""

from keras_cxr.utility.config import REGIMES, UtilityConfig, config_from_dict
from keras_cxr.utility.plan import generator_label_columns, load_splits, target_count_default, top_up_plan
from keras_cxr.utility.shards import (SYNTHETIC_MANIFEST, ShardWriter, mix, real_elements, synthetic_dataset,
                                      write_real_copies, write_synthetic)
from keras_cxr.utility.trainer import RegimeTrainer, classifier_config
from keras_cxr.utility.run import run_utility
from keras_cxr.utility_report import auroc_figure, markdown_report, write_report

__all__ = [
    "REGIMES", "SYNTHETIC_MANIFEST", "UtilityConfig", "config_from_dict",
    "load_splits", "target_count_default", "top_up_plan", "generator_label_columns",
    "ShardWriter", "write_synthetic", "write_real_copies", "synthetic_dataset", "real_elements", "mix",
    "classifier_config", "RegimeTrainer", "run_utility",
    "auroc_figure", "markdown_report", "write_report",
]
