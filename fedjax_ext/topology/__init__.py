"""Topologies for decentralized FL: graphs as arrays, drawn per round.

`_graphs` builds communication graphs (ring, torus, complete, star,
exponential, Erdos-Renyi edge activation, random matchings, link failures,
node dropout) as `Topology` processes whose jittable ``sample(key)`` returns
a padded sparse `Graph` with Metropolis-Hastings or uniform-degree weights,
computed from the drawn adjacency so time-varying runs never retrace.
`_mixing` applies one gossip step (`mix`: sparse neighbour gather, linear in
edges; `mix_dense`: W @ rows) and measures consensus speed (`spectral_gap`,
`contraction` = lambda_2(E[W^T W])) and the TAD-LoRA interval.
"""

from fedjax_ext.topology._graphs import complete
from fedjax_ext.topology._graphs import edge_uniforms
from fedjax_ext.topology._graphs import erdos_renyi
from fedjax_ext.topology._graphs import exponential
from fedjax_ext.topology._graphs import from_edges
from fedjax_ext.topology._graphs import Graph
from fedjax_ext.topology._graphs import MIXING_RULES
from fedjax_ext.topology._graphs import mixing_weights
from fedjax_ext.topology._graphs import random_matching
from fedjax_ext.topology._graphs import ring
from fedjax_ext.topology._graphs import star
from fedjax_ext.topology._graphs import Topology
from fedjax_ext.topology._graphs import torus
from fedjax_ext.topology._graphs import with_link_failures
from fedjax_ext.topology._graphs import with_node_dropout
from fedjax_ext.topology._mixing import check_doubly_stochastic
from fedjax_ext.topology._mixing import contraction
from fedjax_ext.topology._mixing import dense_matrix
from fedjax_ext.topology._mixing import expected_gram
from fedjax_ext.topology._mixing import mix
from fedjax_ext.topology._mixing import mix_dense
from fedjax_ext.topology._mixing import spectral_gap
from fedjax_ext.topology._mixing import summary
from fedjax_ext.topology._mixing import tad_lora_interval
