"""Loss registry: the losses the trainer can pick by name from a config.

Every entry is a :class:`LossSpec`: the loss function, its parameter
initialiser (``None`` for parameter-free losses) and whether it needs a PRNG
key. The trainer passes one hyper-parameter dict (``config.loss.kwargs``) to
both :func:`init` and :func:`apply`; each keeps the names its own function
declares:

* :func:`apply` forwards the names the loss function accepts, silently skips
  names only the initialiser accepts (``beta0``), and raises ``ValueError`` on
  a name neither accepts, naming it;
* :func:`init` filters by the initialiser's signature the same way (so
  initialisers do not need ``**kwargs``) and raises on names neither accepts.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import jax

from dmlx import registry as registry_lib
from dmlx.losses import _contrastive
from dmlx.losses import _dmlda_contrastive
from dmlx.losses import _lifted
from dmlx.losses import _margin
from dmlx.losses import _nca
from dmlx.losses import _npair
from dmlx.losses import _proxy
from dmlx.losses import _smooth_triplet
from dmlx.losses import _softmax
from dmlx.losses import _triplet

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """How to call one registered loss.

  Attributes:
    fn: ``fn(embeddings, labels, [params], [rng], **hyper) -> (loss, aux)``;
      ``params`` is passed iff ``init`` is set, ``rng`` iff ``takes_rng``.
    init: ``init(rng, num_classes, dim, **hyper) -> params`` or ``None``.
    takes_rng: whether ``fn`` takes a PRNG key after ``params``.
  """
  fn: Callable[..., tuple[Array, dict[str, Array]]]
  init: Callable[..., dict[str, Array]] | None = None
  takes_rng: bool = False


def _init_margin(rng: Array, num_classes: int, dim: int, *,
                 beta0: float = 1.2,
                 beta_per_class: bool = False) -> dict[str, Array]:
  """:func:`init_margin_loss` with the registry's ``init`` signature."""
  del rng, dim  # beta is deterministic and does not depend on the dim.
  return _margin.init_margin_loss(num_classes, beta0,
                                  beta_per_class=beta_per_class)


REGISTRY = registry_lib.Registry("loss", {
    "triplet_all": LossSpec(_triplet.triplet_all),
    "triplet_semihard": LossSpec(_triplet.triplet_semihard),
    "triplet_batch_hard": LossSpec(_triplet.triplet_batch_hard),
    "contrastive": LossSpec(_contrastive.contrastive),
    "npair": LossSpec(_npair.npair),
    "margin": LossSpec(_margin.margin_loss, init=_init_margin, takes_rng=True),
    "proxy_nca": LossSpec(_proxy.proxy_nca, init=_proxy.init_proxy_nca),
    "lifted_structure": LossSpec(_lifted.lifted_structure),
    "nca": LossSpec(_nca.nca),
    "softmax": LossSpec(_softmax.softmax_cross_entropy,
                        init=_softmax.init_softmax),
    "normalized_softmax": LossSpec(_softmax.normalized_softmax,
                                   init=_softmax.init_normalized_softmax),
    # Vo & Hays's smooth all-triplet loss with its learned feature scale.
    "smooth_triplet": LossSpec(_smooth_triplet.smooth_triplet,
                               init=_smooth_triplet.init_smooth_triplet),
    # DML-DA's eq. 2 contrastive form (squared distance, unsquared hinge).
    "dmlda_contrastive": LossSpec(_dmlda_contrastive.dmlda_contrastive),
})


def get(name: str) -> LossSpec:
  """The :class:`LossSpec` registered as ``name``.

  Raises:
    ValueError: naming ``name`` and listing the valid names.
  """
  return REGISTRY.get(name)


def apply(name: str, embeddings: Array, labels: Array, *,
          params: Mapping[str, Any] | None = None, rng: Array | None = None,
          **hyper) -> tuple[Array, dict[str, Array]]:
  """Evaluates the registered loss ``name``: ``(loss, aux)``.

  Calls ``fn(embeddings, labels, [params], [rng], **hyper)`` as the spec says.
  ``rng`` is ignored by losses that do not sample; ``params`` may be ``None``
  or empty for losses without parameters.

  Raises:
    ValueError: unknown ``name``; a hyper-parameter neither the loss nor its
      initialiser accepts; missing ``params`` or ``rng``; non-empty ``params``
      for a loss without parameters.
  """
  spec = get(name)
  fn_names = _hyper_names(spec.fn, _num_leading(spec))
  _check_hyper(name, hyper, fn_names | _init_names(spec))
  args = [embeddings, labels]
  if spec.init is not None:
    if params is None:
      raise ValueError(
          f"Loss {name!r} has parameters: pass params=losses.init({name!r}, "
          "rng, num_classes, dim, ...).")
    args.append(params)
  elif params:
    raise ValueError(
        f"Loss {name!r} has no parameters, got params with keys "
        f"{sorted(params)}.")
  if spec.takes_rng:
    if rng is None:
      raise ValueError(f"Loss {name!r} samples: pass a PRNG key as rng=.")
    args.append(rng)
  return spec.fn(*args, **{k: v for k, v in hyper.items() if k in fn_names})


def init(name: str, rng: Array, num_classes: int, dim: int,
         **hyper) -> dict[str, Array]:
  """Initial parameters of the registered loss ``name`` (``{}`` if none).

  ``hyper`` may hold the loss's own hyper-parameters too; only the names the
  initialiser declares are passed on.

  Raises:
    ValueError: unknown ``name`` or a hyper-parameter neither the loss nor
      its initialiser accepts.
  """
  spec = get(name)
  init_names = _init_names(spec)
  _check_hyper(name, hyper,
               init_names | _hyper_names(spec.fn, _num_leading(spec)))
  if spec.init is None:
    return {}
  return spec.init(rng, num_classes, dim,
                   **{k: v for k, v in hyper.items() if k in init_names})


def _num_leading(spec: LossSpec) -> int:
  """Positional arguments of ``spec.fn`` before its hyper-parameters."""
  return 2 + (spec.init is not None) + spec.takes_rng


def _init_names(spec: LossSpec) -> frozenset[str]:
  return frozenset() if spec.init is None else _hyper_names(spec.init, 3)


def _hyper_names(fn: Callable, num_leading: int) -> frozenset[str]:
  """Names of ``fn``'s parameters after its first ``num_leading`` ones."""
  kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD,
           inspect.Parameter.KEYWORD_ONLY)
  params = [p for p in inspect.signature(fn).parameters.values()
            if p.kind in kinds]
  return frozenset(p.name for p in params[num_leading:])


def _check_hyper(name: str, hyper: Mapping[str, Any],
                 known: frozenset[str]):
  unknown = sorted(set(hyper) - known)
  if unknown:
    raise ValueError(
        f"Loss {name!r} got unknown hyper-parameter(s) {unknown}; it accepts "
        f"{sorted(known) or 'none'}.")


def check(name: str, hyper: Mapping[str, Any]) -> None:
  """Raises ``ValueError`` now, before any tracing, if ``name`` is not a
  registered loss or ``hyper`` holds a name neither the loss nor its
  initialiser accepts."""
  spec = get(name)
  _check_hyper(name, hyper,
               _hyper_names(spec.fn, _num_leading(spec)) | _init_names(spec))


@dataclasses.dataclass(frozen=True)
class LossRef:
  """A registered loss and its hyper-parameters, checked when made.

  What a config's ``loss`` section (``name``, ``kwargs``) means, as one
  value: methods that wrap a base loss (MIC's l_α and l_β, DML-DA's L_pair)
  hold one and call :meth:`init` / :meth:`apply`.
  """
  name: str
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "kwargs", dict(self.kwargs))
    check(self.name, self.kwargs)

  @classmethod
  def from_config(cls, loss_config: Any) -> "LossRef":
    """From ``config.loss`` (``name`` and ``kwargs``)."""
    kwargs = loss_config.get("kwargs", None) or {}
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
    return cls(str(loss_config.name), kwargs)

  def init(self, rng: Array, num_classes: int, dim: int) -> dict[str, Array]:
    """:func:`init` of this loss."""
    return init(self.name, rng, num_classes, dim, **self.kwargs)

  def apply(self, embeddings: Array, labels: Array, *,
            params: Mapping[str, Any] | None = None,
            rng: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """:func:`apply` of this loss: always ``(loss, aux)``."""
    out = apply(self.name, embeddings, labels, params=params, rng=rng,
                **self.kwargs)
    return out if isinstance(out, tuple) else (out, {})
