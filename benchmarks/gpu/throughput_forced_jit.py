"""The throughput benchmark with XLA forced on through the augmentation layers Keras refuses to compile.

Keras marks RandomTranslation (the model's "shift" layer, there whenever data.augment.crop_padding > 0,
as in the throughput spec) `supports_jit = False` on every backend, and then compiles the whole model
with jit_compile=False, warning "Model doesn't support `jit_compile=True`". Under JAX that means
no jax.jit at all: every op of every step dispatched from Python. Its JAX implementation
(ops.image.affine_transform -> jax.scipy.ndimage.map_coordinates) traces fine, so this script sets
supports_jit back to True on such layers, recompiles, and measures the same model again: the number
the throughput command would give if benchmark/model.py did the same. Logged in the same MLflow
experiment, with params jit_compile=True and forced_jit_layers naming the layers.

    KERAS_BACKEND=jax python3 benchmarks/gpu/throughput_forced_jit.py resnet50 224 256 bf16 [WARMUP STEPS]
"""

from __future__ import annotations

import sys


def main(backbone: str, image_size: str, batch_size: str, precision: str, warmup: str = "3", steps: str = "10") -> int:
    import keras

    from benchmark import throughput, track
    from benchmark.cli import format_throughput
    from benchmark.train import compile_model

    spec = throughput.throughput_spec(backbone, int(image_size), int(batch_size), precision, jit="on")
    model = throughput.build(spec)
    forced = [layer.name for layer in model._flatten_layers() if not layer.supports_jit]
    for layer in model._flatten_layers():
        layer.supports_jit = True
    compile_model(model, spec, spec.training.learning_rate)  # now with jit_compile=True
    print(f"backend {keras.backend.backend()}: forced XLA through {forced or 'no layers'}; model.jit_compile={model.jit_compile}")
    track.configure()
    result = throughput.measure_model(model, spec, int(warmup), int(steps))
    result["forced_jit_layers"] = ",".join(forced) or "none"
    run_id = throughput.log_run(result)
    print(format_throughput(result))
    print(f"logged to MLflow run {run_id} at {track.display_uri()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
