"""LSQR (Paige & Saunders 1982) in torch, with scalars kept on the device."""

from __future__ import annotations

import torch

from ._common import (
    Record,
    bidiag_start,
    bidiag_step,
    finish,
    prepare,
    safe_div,
    save_checkpoint,
    stop_code,
    sym_ortho,
)
from ._result import SolverResult
from ._state import SCALARS

__all__ = ["lsqr"]


def lsqr(
    A,
    b,
    damp=0.0,
    atol=1e-6,
    btol=1e-6,
    conlim=1e8,
    maxiter=None,
    x0=None,
    M=None,
    callback=None,
    *,
    check_every=None,
    checkpoint=None,
    checkpoint_every=None,
    resume=None,
) -> SolverResult:
    """Solve ``min ||A x - b||^2 + damp^2 ||x||^2`` with LSQR, matrix-free.

    LSQR is conjugate gradients on the normal equations ``(A^T A + damp^2 I) x = A^T b``,
    computed stably from the Golub-Kahan bidiagonalization of ``A``: ``||r||`` decreases
    monotonically. Each iteration costs one product with ``A`` and one with ``A^T``.

    Parameters
    ----------
    A : LinearOperator, torch.Tensor, numpy array or scipy LinearOperator
        The ``(m, n)`` operator (anything :func:`lsr_scale.aslinearoperator` accepts).
    b : torch.Tensor
        Right-hand side, shape ``(m,)``, with ``A``'s dtype and device. Not modified. As in
        scipy, shape ``(m, 1)`` is also taken (as ``b[:, 0]``; ``x`` is still 1-D): the one
        shape that is converted.
    damp : float
        Tikhonov damping (``>= 0``).
    atol, btol : float
        Stopping tolerances (``>= 0``); see Notes.
    conlim : float
        Stop when the estimate of ``cond([A; damp I])`` exceeds ``conlim`` (``> 0``; ``inf``
        disables the test).
    maxiter : int, optional
        Iteration limit (``>= 0``). Default ``2 n`` as in scipy's ``lsqr`` (``n`` replaced by
        ``M.shape[1]`` when ``M`` is given). ``maxiter=0`` returns ``x0`` (or zeros) with
        ``itn=0`` and ``istop=0``, as scipy's ``lsqr(..., iter_lim=0)`` does (its other
        numbers too: ``normr = ||r0||``, ``normar = ||A^T r0||``, ``norma = conda =
        normx = 0``, with ``r0 = b - A x0``).
    x0 : torch.Tensor, optional
        Initial guess, shape ``(n,)``. As in scipy, LSQR then solves for the correction
        ``x - x0`` from ``r0 = b - A x0`` (so ``damp`` regularizes ``x - x0``). Not modified.
    M : LinearOperator, optional
        Right preconditioner of shape ``(n, k)``: LSQR solves ``min ||A M y - b||`` and returns
        ``x = M y`` (``x0 + M y`` with ``x0``). See Notes for ``damp`` with ``M``.
    callback : callable, optional
        ``callback(x)`` is called after each iteration with the current solution estimate
        (do not modify it). With ``M`` this costs one product with ``M`` per iteration. With
        ``check_every > 1`` it may also see up to ``check_every - 1`` iterations after
        convergence, with ``x`` unchanged. A callback with an integer attribute
        ``callback_every`` is called only at the iterations that are multiples of it (and
        ``x`` is formed only then).
    check_every : int, optional
        How often (in iterations) the host reads the on-device convergence flag. Default 1 on
        the CPU and 10 on CUDA. The result does not depend on it.
    checkpoint, checkpoint_every, resume
        Checkpoints and resumed solves, as in :func:`lsr_scale.lsmr` (LSQR's state holds
        the vectors ``u``, ``v``, the iterate and ``w``).

    Returns
    -------
    SolverResult
        ``x``, ``istop`` (:class:`~lsr_scale.StopReason`), ``itn``; ``normr`` (scipy's
        ``r2norm``, ``sqrt(||b - A x||^2 + damp^2 ||x||^2)``), ``normar``
        (``||A^T r - damp^2 x||``), ``norma`` (Frobenius estimate of ``[A; damp I]``),
        ``conda`` and ``normx`` (scipy's ``xnorm``: the estimate of ``||x - x0||``), all
        estimates from the recurrences and of the preconditioned problem when ``M`` is given
        (``normx`` is then ``||y||``); the numbers of products with ``A`` (not ``M``);
        ``history`` with the per-iteration ``normr`` and ``normar``.

    Raises
    ------
    TypeError, ValueError
        On a wrong shape, dtype or device of ``b``, ``x0`` or ``M``, a bad tolerance, or a
        ``resume`` state saved with other settings or another ``b``.
    SolverInterrupted
        On a KeyboardInterrupt (Ctrl-C) during the iterations, carrying the latest iterate
        and (between iterations) the state to resume from, as in :func:`lsr_scale.lsmr`.

    Notes
    -----
    The stopping rule and ``istop`` codes are scipy's, listed in
    :class:`~lsr_scale.StopReason` (with ``test2 = normar / (norma normr + eps)`` and
    ``test3 = 1 / (conda + eps)`` as in LSQR). ``istop=0`` is returned only when
    ``b - A x0 = 0`` or ``A^T (b - A x0) = 0`` before the first iteration (``x = x0``;
    ``x = 0`` when ``b = 0``), or with ``maxiter=0``.

    With ``damp > 0`` and a preconditioner, the damping must apply to ``x``, not to ``y``.
    The solver therefore runs undamped on the stacked problem
    ``[A; damp I] M y ~ [b; 0]`` (built internally, no extra products with ``A``). The
    reported estimates are those of this stacked problem: ``normr`` includes the damping
    term, and ``normar`` is ``||M^T (A^T r - damp^2 x)||``.

    The iteration is free of host-device syncs: the scalars are 0-d tensors on ``A``'s device,
    the rotations are branch-free with safe division at breakdowns, and the stopping tests
    produce an on-device flag that the host reads every ``check_every`` iterations. Iterations
    after the tests fire leave ``x`` and all reported numbers unchanged.

    References
    ----------
    .. [1] C. C. Paige and M. A. Saunders, "LSQR: An algorithm for sparse linear equations
       and sparse least squares", ACM Trans. Math. Softw. 8(1), 43-71, 1982.
    .. [2] C. C. Paige and M. A. Saunders, "Algorithm 583. LSQR: Sparse linear equations and
       least squares problems", ACM Trans. Math. Softw. 8(2), 195-209, 1982.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> A = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    >>> b = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    >>> res = ls.lsqr(A, b, atol=1e-10, btol=1e-10)
    >>> res.x.round(decimals=8) + 0.0
    tensor([ 1., -1.], dtype=torch.float64)
    >>> int(res.istop), res.itn
    (1, 1)
    """
    prob = prepare(
        A,
        b,
        damp,
        atol,
        btol,
        conlim,
        maxiter,
        x0,
        M,
        callback,
        check_every,
        solver="lsqr",
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    with torch.no_grad():
        return _lsqr(prob)


_SCALARS = SCALARS["lsqr"]  # the order of snapshot() below


def _lsqr(prob) -> SolverResult:
    op, u, x = prob.op, prob.u, prob.y
    dev, dtype = u.device, u.dtype
    norm = torch.linalg.vector_norm

    def T(v):  # constants are made once, outside the loop (torch.tensor copies host->device)
        return torch.tensor(v, dtype=dtype, device=dev)

    one = T(1.0)

    eps = torch.finfo(dtype).eps
    normb = prob.normb
    zero = T(0.0)
    if prob.state is None:
        beta, v, alfa, trivial = bidiag_start(prob)
        if trivial:
            return finish(prob, x, 0, 0, beta, zero, zero, zero, zero)
        w = v.clone()
        rhobar, phibar = alfa, beta
        anorm, ddnorm, res2, xxnorm, z = zero, zero, zero, zero, zero
        cs2, sn2 = T(-1.0), T(0.0)
        # reported (frozen once done); before any iteration they are scipy's maxiter=0 values
        rec = Record(prob, beta, alfa * beta, zero, zero, zero)
        itn = 0
    else:
        v, w = prob.state.vectors["v"].clone(), prob.state.vectors["w"].clone()
        alfa, rhobar, phibar, anorm, ddnorm, res2, xxnorm, z, cs2, sn2 = (
            prob.state.scalars[k] for k in _SCALARS
        )
        rec = Record(prob, None, None, None, None, None)
        itn = prob.state.itn

    damp = prob.damp
    dampsq = damp * damp
    atol, btol, ctol = prob.atol, prob.btol, prob.ctol

    def snapshot():
        scalars = (alfa, rhobar, phibar, anorm, ddnorm, res2, xxnorm, z, cs2, sn2)
        vectors = {"u": u, "v": v, "y": x, "w": w}
        return rec.state(itn, vectors, dict(zip(_SCALARS, scalars)))

    if rec.finished:
        return rec.result(x, itn)
    saved, every = itn, prob.checkpoint_every
    try:
        while itn < prob.maxiter:
            itn += 1
            alfa_old = alfa
            beta, alfa = bidiag_step(op, u, v, alfa, one)
            anorm = torch.where(
                beta > 0,
                torch.sqrt(anorm * anorm + alfa_old * alfa_old + beta * beta + dampsq),
                anorm,
            )

            # Eliminate the damping, then the subdiagonal beta.
            if damp > 0:
                rhobar1 = torch.sqrt(rhobar * rhobar + dampsq)
                cs1 = rhobar / rhobar1
                sn1 = damp / rhobar1
                psi = sn1 * phibar
                phibar = cs1 * phibar
            else:
                rhobar1, psi = rhobar, zero
            cs, sn, rho = sym_ortho(rhobar1, beta)
            theta = sn * alfa
            rhobar = -cs * alfa
            phi = cs * phibar
            phibar = sn * phibar
            tau = sn * phi

            # x += (phi/rho) w; w = v - (theta/rho) w  (x update masked once done).
            live = ~rec.done
            t1 = torch.where(live, safe_div(phi, rho), zero)
            t2 = -safe_div(theta, rho)
            ddnorm = ddnorm + safe_div(norm(w), rho) ** 2
            x.add_(w * t1)
            w.mul_(t2).add_(v)

            # ||x|| estimate via a second rotation sequence.
            delta = sn2 * rho
            gambar = -cs2 * rho
            rhs = phi - delta * z
            zbar = safe_div(rhs, gambar)
            xnorm = torch.sqrt(xxnorm + zbar * zbar)
            gamma = torch.hypot(gambar, theta)
            cs2 = safe_div(gambar, gamma)
            sn2 = safe_div(theta, gamma)
            z = safe_div(rhs, gamma)
            xxnorm = xxnorm + z * z

            # Norm estimates and stopping tests, on the device.
            acond = anorm * torch.sqrt(ddnorm)
            res2 = res2 + psi * psi
            rnorm = torch.sqrt(phibar * phibar + res2)
            arnorm = alfa * tau.abs()
            test1 = rnorm / normb
            test2 = arnorm / (anorm * rnorm + eps)
            test3 = 1.0 / (acond + eps)
            tt1 = test1 / (1.0 + anorm * xnorm / normb)
            rtol = btol + atol * anorm * xnorm / normb
            code = stop_code(itn, prob.maxiter, test1, rtol, test2, atol, test3, ctol, tt1)

            stop = rec.update(itn, code, x, rnorm, arnorm, anorm, acond, xnorm)
            if every is not None and itn % every == 0:
                saved = save_checkpoint(prob, itn, saved, snapshot)
            if stop:
                break
        save_checkpoint(prob, itn, saved, snapshot, final=True)
    except KeyboardInterrupt as err:
        raise rec.interrupted(x, itn, snapshot) from err
    return rec.result(x, itn)
