"""dmlx.losses: deep-metric-learning losses as pure, jittable functions.

Every loss is ``loss, aux = fn(embeddings [B, D], labels [B] int, [params],
[rng], **hyper)`` with a scalar ``loss`` and a dict ``aux`` of scalars; it works
under ``jit``, ``vmap`` and ``grad`` and stays finite (values and gradients)
for any batch composition. The trainer reaches them by name through
:data:`REGISTRY`, :func:`get`, :func:`apply` and :func:`init`.
"""
from dmlx.losses._contrastive import contrastive
from dmlx.losses._distances import l2_normalize
from dmlx.losses._distances import negative_mask
from dmlx.losses._distances import pairwise_distances
from dmlx.losses._distances import positive_mask
from dmlx.losses._distances import same_class_mask
from dmlx.losses._distances import safe_sqrt
from dmlx.losses._distances import similarity_matrix
from dmlx.losses._lifted import lifted_structure
from dmlx.losses._margin import distance_weighted_log_weights
from dmlx.losses._margin import distance_weighted_sampling
from dmlx.losses._margin import init_margin_loss
from dmlx.losses._margin import margin_loss
from dmlx.losses._nca import nca
from dmlx.losses._npair import npair
from dmlx.losses._proxy import init_proxy_nca
from dmlx.losses._proxy import proxy_nca
from dmlx.losses._registry import LossRef
from dmlx.losses._registry import LossSpec
from dmlx.losses._registry import REGISTRY
from dmlx.losses._registry import apply
from dmlx.losses._registry import check
from dmlx.losses._registry import get
from dmlx.losses._registry import init
from dmlx.losses._smooth_triplet import init_smooth_triplet
from dmlx.losses._smooth_triplet import smooth_triplet
from dmlx.losses._softmax import init_normalized_softmax
from dmlx.losses._softmax import init_softmax
from dmlx.losses._softmax import normalized_softmax
from dmlx.losses._softmax import softmax_cross_entropy
from dmlx.losses._triplet import triplet_all
from dmlx.losses._triplet import triplet_batch_hard
from dmlx.losses._triplet import triplet_semihard
# Seed methods' losses (their host-side state lives in dmlx.methods).
from dmlx.losses._density import class_density
from dmlx.losses._density import density_regularizer
from dmlx.losses._dmlda_contrastive import dmlda_contrastive
from dmlx.losses._density import entropy_regularizer
from dmlx.losses._density import global_orthogonal_regularizer
from dmlx.losses._magnet import magnet_loss
from dmlx.losses._mic import gradient_reversal
from dmlx.losses._mic import init_projection
from dmlx.losses._mic import mutual_information_loss
from dmlx.losses._mic import switch_labels
from dmlx.losses._nngk import CentreBank
from dmlx.losses._nngk import nngk
from dmlx.losses._nngk import nngk_gathered
