"""Training: phases, optimizers, the best epoch's weights kept, divergence caught."""

import keras
import numpy as np
import pytest

from benchmark.data import load_dataset
from benchmark.model import create_model
from benchmark.spec import load_experiment
from benchmark.plan import plan_trial
from benchmark.train import Fit, History, TrainingDiverged, make_optimizer, train


def ci_spec(strategy="frozen", **values):
    return load_experiment("ci").resolve("vgg16", strategy).with_values(**values)


def test_the_best_epoch_is_the_first_of_equal_bests():
    history = History(epochs=[{"val_top1": 0.2}, {"val_top1": 0.5}, {"val_top1": 0.5}, {"val_top1": 0.4}])
    assert history.best_index == 1 and history.series("val_top1")[history.best_index] == 0.5


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


def train_on_images(spec, data):
    """A freshly built model trained through its backbone on the images (no cache)."""
    training = spec.training.model_copy(update={"feature_cache": "off"})
    spec = spec.model_copy(update={"training": training})
    built = create_model(spec, data.num_classes)
    return built, train(plan_trial(spec), built, {"images": Fit(built.model, data)}, spec)


def test_training_ends_on_the_weights_of_the_best_validation_epoch():
    spec = ci_spec(learning_rate=0.05)  # large enough that later epochs move away from the best one
    data = small_data(spec)
    built, history = train_on_images(spec, data)
    assert len(history.epochs) == spec.training.epochs and [e["epoch"] for e in history.epochs] == [0, 1, 2]
    predicted = built.model.predict(data.x_val, verbose=0).argmax(axis=1)
    assert np.mean(predicted == data.y_val) == pytest.approx(max(history.series("val_top1")), abs=1e-6)


def test_a_loss_that_becomes_nan_stops_the_trial_with_advice():
    spec = ci_spec(learning_rate=1e35)
    data = small_data(spec, train=64, validation=32)
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train_on_images(spec, data)


def lbfgs_spec(l2: float, normalize: bool = False):
    spec = ci_spec()
    return spec.model_copy(update={
        "training": spec.training.model_copy(update={"optimizer": "lbfgs", "l2": l2}),
        "head": spec.head.model_copy(update={"normalize": normalize})})


def made_features(n: int, dim: int, classes: list[int], num_classes: int, seed: int):
    """Gaussian blobs, one per class in `classes` (the others absent), as a cached-features Dataset."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = rng.choice(classes, size=n)
    x = (centres[labels] + 1.5 * rng.normal(size=(n, dim))).astype(np.float32)
    return x, labels


def reference_logistic_regression(x, y, classes, l2):
    """Mean cross-entropy + l2/2 |W|^2 minimised by scipy's L-BFGS-B on the explicit objective."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    x = x.astype(np.float64)
    n, dim, k = len(x), x.shape[1], len(classes)
    index = np.searchsorted(classes, y)

    def objective(theta):
        w, b = theta[: dim * k].reshape(dim, k), theta[dim * k:]
        logp = log_softmax(x @ w + b, axis=1)
        p = np.exp(logp)
        p[np.arange(n), index] -= 1
        loss = -logp[np.arange(n), index].mean() + l2 / 2 * (w ** 2).sum()
        return loss, np.concatenate([(x.T @ p / n + l2 * w).ravel(), p.mean(axis=0)])

    theta = minimize(objective, np.zeros(dim * k + k), jac=True, method="L-BFGS-B",
                     options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-14}).x
    return theta[: dim * k].reshape(dim, k), theta[dim * k:]


@pytest.mark.parametrize("normalize", [False, True])
def test_the_lbfgs_head_is_the_l2_regularised_logistic_regression_of_the_features(normalize):
    from benchmark.data import Dataset
    from benchmark.model import FrozenPart, create_head

    classes, num_classes, l2 = [0, 1, 2, 4, 5], 7, 0.01  # classes 3 and 6 are absent from training
    x, y = made_features(400, 12, classes, num_classes, seed=0)
    x_val, y_val = made_features(100, 12, classes, num_classes, seed=0)
    features = Dataset(x_train=x, y_train=y, x_val=x_val, y_val=y_val, x_test=x_val, y_test=y_val,
                       class_names=[str(c) for c in range(num_classes)], origin="made")
    spec = lbfgs_spec(l2, normalize)
    made = keras.Input((12,))
    part = FrozenPart(features=keras.Model(made, keras.layers.Identity()(made)), base=None, depth=0)
    head = create_head(spec, num_classes, part)
    history = train_linear_probe(head, spec, features)

    inputs = keras.ops.convert_to_numpy(head.layers[1](x)) if normalize else x
    kernel, bias = reference_logistic_regression(inputs, y, np.array(classes), l2)
    logits = head.predict(x_val, verbose=0)
    expected = (keras.ops.convert_to_numpy(head.layers[1](x_val)) if normalize else x_val) @ kernel + bias
    probabilities = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(probabilities(logits[:, classes]), probabilities(expected), atol=2e-3)
    assert (logits.argmax(1) != 3).all() and (logits.argmax(1) != 6).all()  # never an absent class
    [epoch] = history.epochs
    assert epoch["converged"] == 1.0 and 1 < epoch["solver_iterations"] < 1000
    assert epoch["val_top1"] == pytest.approx(np.mean(logits.argmax(1) == y_val))


def train_linear_probe(head, spec, features):
    from benchmark.train import fit_linear_probe

    return fit_linear_probe(head, spec, features)


def test_lbfgs_is_for_head_only_strategies_and_says_what_to_change():
    from benchmark.errors import BenchmarkError
    from benchmark.trial import prepare

    spec = lbfgs_spec(0.01).with_values(unfreeze=2)
    with pytest.raises(BenchmarkError, match=r"strategies.frozen.unfreeze = 2: .*lbfgs.*use unfreeze = 0"):
        prepare(spec)


def rows_file(tmp_path, images: np.ndarray):
    from benchmark.data import Rows

    np.save(tmp_path / "images.npy", images)
    return lambda index: Rows(np.load(tmp_path / "images.npy", mmap_mode="r"), index)


def test_image_batches_visit_every_training_image_once_an_epoch_in_a_seeded_order(tmp_path):
    from benchmark.train import ImageBatches

    images = np.arange(23 * 2 * 2 * 3, dtype=np.uint8).reshape(23, 2, 2, 3) % 251  # row r starts with 12 r mod 251
    rows = rows_file(tmp_path, images)(np.arange(0, 23, 1))
    labels = np.arange(23) + 100

    def epochs(batches, count=3):
        seen = []
        for _ in range(count):
            epoch = [batches[i] for i in range(len(batches))]
            assert [len(y) for _, y in epoch] == [5, 5, 5, 5, 3]
            x, y = np.concatenate([x for x, _ in epoch]), np.concatenate([y for _, y in epoch])
            np.testing.assert_array_equal(x, images[y - 100])  # each image with its own label
            assert sorted(y.tolist()) == labels.tolist()  # every image once
            seen.append(y.tolist())
            batches.on_epoch_end()
        return seen

    first = epochs(ImageBatches(rows, labels, batch_size=5, seed=3))
    assert len({tuple(order) for order in first}) == 3 and first[0] != labels.tolist()  # shuffled anew each epoch
    assert epochs(ImageBatches(rows, labels, batch_size=5, seed=3)) == first  # seeded
    assert epochs(ImageBatches(rows, labels, batch_size=5, seed=3, first_epoch=1), 2) == first[1:]  # phase 2 goes on
    assert epochs(ImageBatches(rows, labels, batch_size=5, seed=4))[0] != first[0]
    assert epochs(ImageBatches(rows, labels, batch_size=5)) == [labels.tolist()] * 3  # validation: in order


def test_training_on_own_images_reads_batches_from_their_file(tmp_path, monkeypatch):
    """Images held as Rows (own images) train through ImageBatches, never as one array: the same
    best-epoch bookkeeping as in memory."""
    from benchmark.data import Rows

    spec = ci_spec(learning_rate=0.05)
    data = small_data(spec)
    at = rows_file(tmp_path, np.concatenate([data.x_train, data.x_val]))
    on_file = type(data)(x_train=at(np.arange(128)), y_train=data.y_train, x_val=at(np.arange(128, 192)),
                         y_val=data.y_val, x_test=at(np.arange(128, 160)), y_test=data.y_val[:32],
                         class_names=data.class_names, origin=data.origin)
    whole_reads = []
    read = Rows.read
    monkeypatch.setattr(Rows, "read", lambda self, rows: whole_reads.append(len(rows)) or read(self, rows))
    built, history = train_on_images(spec, on_file)
    assert len(history.epochs) == spec.training.epochs
    assert max(whole_reads) <= spec.training.batch_size  # batch by batch
    predicted = built.model.predict(data.x_val, verbose=0).argmax(axis=1)
    assert np.mean(predicted == data.y_val) == pytest.approx(max(history.series("val_top1")), abs=1e-6)


def test_arrays_fed_once_train_exactly_as_keras_fed_them_each_epoch():
    """runtime.fed_once: one dataset for the whole fit (no iterator per epoch on TensorFlow), the
    very batches Keras's own array feeding gives, so the curves are those of `fit` on the arrays."""
    from benchmark import runtime

    rng = np.random.default_rng(0)
    x, x_val = rng.normal(size=(150, 8)).astype("float32"), rng.normal(size=(40, 8)).astype("float32")
    y, y_val = (keras.utils.to_categorical(rng.integers(0, 5, n), 5) for n in (150, 40))

    def fitted(feed: bool) -> dict:
        runtime.seed_everything(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5, kernel_initializer=keras.initializers.GlorotUniform(0))])
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        if not feed:
            return model.fit(x, y, batch_size=32, shuffle=True, epochs=4, validation_data=(x_val, y_val), verbose=0).history
        train_x, train_y, batches = runtime.fed_once(x, y, 32, shuffle=True)
        val_x, val_y, val_batches = runtime.fed_once(x_val, y_val, 32, shuffle=False)
        if "steps" in batches:  # TensorFlow: a dataset
            return model.fit(train_x, steps_per_epoch=batches["steps"], validation_data=val_x,
                             validation_steps=val_batches["steps"], shuffle=False, epochs=4, verbose=0).history
        return model.fit(train_x, train_y, **batches, validation_data=(val_x, val_y), epochs=4, verbose=0).history

    arrays, fed = fitted(feed=False), fitted(feed=True)
    assert fed["loss"] == arrays["loss"] and fed["val_loss"] == arrays["val_loss"]
    assert len(set(fed["loss"])) == 4  # it trained


def test_a_head_on_cached_features_trains_and_validates_as_a_plain_fit_does():
    """The fed path of a head (train.fed_features: one call of the compiled step per epoch on
    TensorFlow, runtime.steps_per_execution; validation in one batch at each epoch's end,
    ValidatedAtEpochEnd) against `fit` on the arrays with validation_data, batch by batch: the same
    training curves and weights to the last bit, the same validation accuracies, the validation
    loss to float rounding (one batch's mean instead of a mean of batch means)."""
    from benchmark import runtime
    from benchmark.train import EpochRecorder, ValidatedAtEpochEnd, fed_features

    spec = ci_spec()
    rng = np.random.default_rng(0)
    data = type(load_dataset(spec.data))(
        x_train=rng.normal(size=(150, 8)).astype("float32"), y_train=rng.integers(0, 5, 150),
        x_val=rng.normal(size=(40, 8)).astype("float32"), y_val=rng.integers(0, 5, 40),
        x_test=np.zeros((0, 8), "float32"), y_test=np.zeros(0, int), class_names=[str(i) for i in range(5)], origin="test")

    def fitted(fed: bool) -> tuple[dict, list]:
        runtime.seed_everything(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5, kernel_initializer=keras.initializers.GlorotUniform(0))])
        steps = runtime.steps_per_execution(5) if fed else 1  # 150 rows in batches of 32
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.CategoricalAccuracy(name="top1")], steps_per_execution=steps)
        y_val = keras.utils.to_categorical(data.y_val, 5)
        if not fed:
            history = model.fit(data.x_train, keras.utils.to_categorical(data.y_train, 5), batch_size=32, shuffle=True,
                                epochs=4, validation_data=(data.x_val, y_val), verbose=0).history
            return history, model.get_weights()
        x, y, batches = fed_features(data, 5, 32, seed=0)
        history = History()
        recorder = EpochRecorder(history)  # as train() passes them: the validation marks the recorder's training end
        model.fit(x, y, **batches, epochs=4, verbose=0, callbacks=[ValidatedAtEpochEnd(data.x_val, y_val, recorder), recorder])
        return {key: history.series(key) for key in ("loss", "top1", "val_loss", "val_top1")}, model.get_weights()

    (plain, plain_weights), (fed, fed_weights) = fitted(fed=False), fitted(fed=True)
    assert fed["loss"] == plain["loss"] and fed["top1"] == plain["top1"] and len(set(fed["loss"])) == 4
    assert all(np.array_equal(a, b) for a, b in zip(fed_weights, plain_weights))
    assert fed["val_top1"] == plain["val_top1"]
    assert fed["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-6)
