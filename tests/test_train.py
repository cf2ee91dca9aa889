"""Training: phases, optimizers, the best epoch's weights kept, divergence caught."""

import keras
import numpy as np
import pytest

from benchmark.data import load_dataset
from benchmark.model import create_model
from benchmark.spec import load_experiment
from benchmark.train import History, TrainingDiverged, make_optimizer, phases, train


def ci_spec(strategy="frozen", **values):
    return load_experiment("ci").resolve("vgg16", strategy).with_values(**values)


def test_the_best_epoch_is_the_first_of_equal_bests():
    history = History(epochs=[{"val_top1": 0.2}, {"val_top1": 0.5}, {"val_top1": 0.5}, {"val_top1": 0.4}])
    assert history.best_index == 1 and history.series("val_top1")[history.best_index] == 0.5


def test_two_phase_is_the_head_at_the_learning_rate_then_the_unfrozen_layers_at_its_fraction():
    spec = ci_spec("top", unfreeze=3, learning_rate=0.01, finetune_lr_scale=0.1)
    strategy = spec.strategy.model_copy(update={"schedule": "two_phase", "head_epochs": 2, "epochs": 4})
    assert phases(spec.model_copy(update={"strategy": strategy})) == [(0, 0.01, 2), (3, pytest.approx(0.001), 4)]
    assert phases(spec) == [(3, 0.01, 3)]  # one phase: training.epochs


@pytest.mark.parametrize("name, kind", [("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW),
                                        ("sgd", keras.optimizers.SGD)])
def test_each_optimizer_gets_its_decoupled_weight_decay(name, kind):
    training = ci_spec().training.model_copy(update={"optimizer": name, "weight_decay": 0.25})
    optimizer = make_optimizer(training, 0.01)
    assert type(optimizer) is kind and optimizer.weight_decay == 0.25
    assert float(optimizer.learning_rate) == pytest.approx(0.01)


def small_data(spec, train=128, validation=64):
    data = load_dataset(spec.data)
    return type(data)(x_train=data.x_train[:train], y_train=data.y_train[:train], x_val=data.x_val[:validation],
                      y_val=data.y_val[:validation], x_test=data.x_test[:32], y_test=data.y_test[:32],
                      class_names=data.class_names, origin=data.origin)


def test_training_ends_on_the_weights_of_the_best_validation_epoch():
    spec = ci_spec(learning_rate=0.05)  # large enough that later epochs move away from the best one
    data = small_data(spec)
    built = create_model(spec, data.num_classes)
    history = train(built, spec, data)
    assert len(history.epochs) == spec.training.epochs and [e["epoch"] for e in history.epochs] == [0, 1, 2]
    predicted = built.model.predict(data.x_val, verbose=0).argmax(axis=1)
    assert np.mean(predicted == data.y_val) == pytest.approx(max(history.series("val_top1")), abs=1e-6)


def test_a_loss_that_becomes_nan_stops_the_trial_with_advice():
    spec = ci_spec(learning_rate=1e35)
    data = small_data(spec, train=64, validation=32)
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train(create_model(spec, data.num_classes), spec, data)
