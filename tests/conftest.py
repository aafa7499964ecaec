"""Shared fixtures: one TFDS data dir per test session, built once."""

import os

import pytest

from fedjax_ext import data


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  path = os.environ.get('FEDJAX_EXT_DATA_DIR')
  path = path or str(tmp_path_factory.mktemp('tfds'))
  data.load_dataset('digits', data_dir=path)  # Build before CLI tests run.
  return path
