"""PLACEHOLDER: JacobianOperator is being written."""

from ._base import LinearOperator


class JacobianOperator(LinearOperator):
    pass


def flatten_params(params):
    raise NotImplementedError


def unflatten_params(vec, like):
    raise NotImplementedError
