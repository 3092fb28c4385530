"""Finding-classifier recipe: the 14-finding multi-label judge of `keras-cxr evaluate`, trained on
real images only (keras_cxr/models/classifier.py)."""

from keras_cxr.recipes import Recipe, adam

PRESETS = {
    # CPU-sized: 64 px small CNN, a few minutes on the 500-image sample
    "default": {"image_size": 64, "channels": 1, "batch_size": 32, "epochs": 15,
                "model_kwargs": {"backbone": "small", "width": 32, "feature_dim": 128, "dropout": 0.2},
                "compile_kwargs": {"learning_rate": 1e-3}},
    # CheXNet-style: DenseNet121 at 224 px, ImageNet initialisation, fine-tuned (GPU)
    "densenet121": {"image_size": 224, "channels": 1, "batch_size": 32, "epochs": 10,
                    "model_kwargs": {"backbone": "densenet121", "backbone_weights": "imagenet", "feature_dim": 256,
                                     "dropout": 0.2},
                    "compile_kwargs": {"learning_rate": 1e-4}},
}


def optimizer(kw: dict) -> dict:
    return {"optimizer": adam(kw, learning_rate=1e-3, weight_decay=1e-4)}


RECIPES = {
    "classifier": Recipe(
        name="classifier", model_class="keras_cxr.models.classifier:FindingClassifier", presets=PRESETS,
        optimizer=optimizer, kind="classifier", compile_keys=("learning_rate", "weight_decay"),
        summary="multi-label classifier of the 14 findings (AUROC per finding)"),
}
