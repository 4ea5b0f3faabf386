"""Test set-up: Keras on TensorFlow, 2 logical CPUs, clean gin, seeds."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so MirroredStrategy tests run 2 replicas on a CPU
# (Keras tf_distribute_training_test, NSL _set_up_virtual_devices). This must
# happen before TensorFlow initialises its devices.
_cpu = tf.config.list_physical_devices("CPU")[0]
if tf.config.get_logical_device_configuration(_cpu) is None:
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )


def pytest_addoption(parser):
    parser.addoption(
        "--run_slow", action="store_true", help="also run @pytest.mark.slow"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run_slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run_slow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_state():
    # Gin bindings are global: clear them around every test (TF-Agents).
    gin.clear_config()
    keras.utils.set_random_seed(0)
    yield
    gin.clear_config()
    keras.mixed_precision.set_dtype_policy("float32")
