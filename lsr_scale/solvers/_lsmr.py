"""LSMR (Fong & Saunders 2011) in torch, with scalars kept on the device."""

from __future__ import annotations

import torch

from .. import cuda
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

__all__ = ["lsmr"]


def lsmr(
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
    """Solve ``min ||A x - b||^2 + damp^2 ||x||^2`` with LSMR, matrix-free.

    LSMR is MINRES applied to the normal equations ``(A^T A + damp^2 I) x = A^T b``, computed
    from the Golub-Kahan bidiagonalization of ``A``: ``||A^T r||`` decreases monotonically,
    which makes early stopping safe. Each iteration costs one product with ``A`` and one with
    ``A^T``.

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
        Stopping tolerances (``>= 0``); see Notes. ``1e-6`` gives about 6 correct digits when
        the problem is well conditioned.
    conlim : float
        Stop when the estimate of ``cond([A; damp I])`` exceeds ``conlim`` (``> 0``; ``inf``
        disables the test).
    maxiter : int, optional
        Iteration limit (``>= 0``). Default ``min(m, n)`` as in scipy, with ``n`` replaced by
        ``M.shape[1]`` when ``M`` is given. ``maxiter=0`` returns ``x0`` (or zeros) with
        ``itn=0`` and ``istop=0``, as scipy does (its other numbers too: ``normr = ||r0||``,
        ``normar = ||A^T r0||``, ``norma = ||A^T r0|| / ||r0||``, ``conda = 1``,
        ``normx = 0``, with ``r0 = b - A x0``).
    x0 : torch.Tensor, optional
        Initial guess, shape ``(n,)``. As in scipy, LSMR then solves for the correction
        ``x - x0`` from ``r0 = b - A x0`` (so ``damp`` regularizes ``x - x0``). Not modified.
    M : LinearOperator, optional
        Right preconditioner of shape ``(n, k)``: LSMR solves ``min ||A M y - b||`` and returns
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
        the CPU and 10 on CUDA. Larger values avoid host-device syncs at the price of up to
        ``check_every - 1`` wasted iterations; the result is the same.
    checkpoint : callable, optional
        ``checkpoint(state)`` is called with a :class:`~lsr_scale.solvers.SolverState` after
        every ``checkpoint_every``-th iteration and once at the end of the solve (unless the
        last iteration was just saved). Save it with
        ``torch.save(state.to_dict(), path)``; see Notes.
    checkpoint_every : int, optional
        Iterations between checkpoints (``>= 1``); required with ``checkpoint``.
    resume : SolverState or dict, optional
        Continue the solve a checkpoint (or :class:`~lsr_scale.solvers.SolverInterrupted`)
        saved, from its iteration, with the same ``A``, ``b``, ``x0``, ``M`` and settings
        (``maxiter`` may be larger; a solve that stopped at its ``maxiter`` then goes on).
        A :class:`SolverState` or the dict of its ``to_dict()`` (e.g. from
        ``torch.load(path, weights_only=True)``). Not modified.

    Returns
    -------
    SolverResult
        ``x``, ``istop`` (:class:`~lsr_scale.StopReason`), ``itn``; ``normr``
        (``sqrt(||b - A x||^2 + damp^2 ||x||^2)``), ``normar`` (``||A^T r - damp^2 x||``),
        ``norma`` (Frobenius estimate of ``[A; damp I]``), ``conda`` and ``normx``
        (``||x||``), all estimates from the recurrences as in scipy and of the preconditioned
        problem when ``M`` is given (``normx`` is then ``||y||``); the numbers of products with
        ``A`` (not ``M``); ``history`` with the per-iteration ``normr`` and ``normar``.

    Raises
    ------
    TypeError, ValueError
        On a wrong shape, dtype or device of ``b``, ``x0`` or ``M``, a bad tolerance, or a
        ``resume`` state saved with other settings or another ``b``.
    SolverInterrupted
        On a KeyboardInterrupt (Ctrl-C) during the iterations: a subclass of
        ``KeyboardInterrupt`` whose ``result`` holds the latest iterate
        (``result.interrupted`` is True) and whose ``state`` resumes it (see Notes). A
        KeyboardInterrupt before the first iteration propagates as it is.

    Notes
    -----
    The stopping rule and ``istop`` codes are scipy's, listed in
    :class:`~lsr_scale.StopReason`. ``istop=0`` is returned only when ``b - A x0 = 0`` or
    ``A^T (b - A x0) = 0`` before the first iteration (``x = x0``; ``x = 0`` when ``b = 0``),
    or with ``maxiter=0``.

    *Checkpoints and interrupts.* A :class:`~lsr_scale.solvers.SolverState` holds the
    iteration's vectors (``u``, ``v``, the iterate, ``h``, ``hbar``: five vectors of the
    sizes of ``b`` and ``x``) and scalars, the reported numbers, the history, the product
    counts and the settings. It is built only when a checkpoint is due (copies on the
    device, no host sync), so the iterations in between cost what they cost without
    checkpoints. ``resume=state`` continues with bitwise the same iterates, ``history``,
    ``itn`` and ``istop`` as an uninterrupted solve on the same device. A Ctrl-C raises
    :class:`~lsr_scale.solvers.SolverInterrupted`: its ``result.x`` is the latest iterate and
    ``result.itn`` the iterations completed (``istop`` is 7 unless a stopping test had
    already fired); its ``state`` is the state after ``result.itn`` when the interrupt came
    between iterations (e.g. raised by ``callback``), and None when it came in the middle of
    one (``x`` may then be one iteration further than ``itn``): resume from the last
    checkpoint then.

    With ``damp > 0`` and a preconditioner, the damping must apply to ``x``, not to ``y``.
    The solver therefore runs undamped on the stacked problem
    ``[A; damp I] M y ~ [b; 0]`` (built internally, no extra products with ``A``). The
    reported estimates are those of this stacked problem: ``normr`` includes the damping
    term, and ``normar`` is ``||M^T (A^T r - damp^2 x)||``.

    The iteration is free of host-device syncs: every bidiagonalization and rotation scalar is
    a 0-d tensor on ``A``'s device, breakdowns (``alpha = 0`` or ``beta = 0``) are handled by
    safe division, and the stopping tests produce an on-device flag. After the tests fire,
    further iterations (until the host next looks) leave ``x`` and every reported number
    unchanged, so ``itn`` and ``istop`` are those of a check after every iteration. The vector
    updates go through :func:`lsr_scale.cuda.lsmr_update_` (fused on CUDA when available).

    References
    ----------
    .. [1] D. C.-L. Fong and M. A. Saunders, "LSMR: An iterative algorithm for sparse
       least-squares problems", SIAM J. Sci. Comput. 33(5), 2950-2971, 2011.
    .. [2] C. C. Paige and M. A. Saunders, "LSQR: An algorithm for sparse linear equations
       and sparse least squares", ACM Trans. Math. Softw. 8(1), 43-71, 1982.

    Examples
    --------
    >>> import torch, lsr_scale as ls
    >>> A = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    >>> b = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    >>> res = ls.lsmr(A, b, atol=1e-10, btol=1e-10)
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
        solver="lsmr",
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    with torch.no_grad():
        return _lsmr(prob)


_SCALARS = SCALARS["lsmr"]  # the order of snapshot() below


def _lsmr(prob) -> SolverResult:
    op, u, x = prob.op, prob.u, prob.y
    dev, dtype = u.device, u.dtype
    norm = torch.linalg.vector_norm

    def T(v):  # constants are made once, outside the loop (torch.tensor copies host->device)
        return torch.tensor(v, dtype=dtype, device=dev)

    one = T(1.0)

    normb = prob.normb
    zero = T(0.0)
    damp = T(prob.damp)
    if prob.state is None:
        beta, v, alpha, trivial = bidiag_start(prob)
        if trivial:  # scipy reports normx = 0 here
            return finish(prob, x, 0, 0, beta, zero, alpha, T(1.0), zero)
        zetabar = alpha * beta
        alphabar = alpha
        rho, rhobar, cbar, sbar = T(1.0), T(1.0), T(1.0), T(0.0)
        h = v.clone()
        hbar = torch.zeros_like(x)
        # ||r|| estimation
        betadd, betad, rhodold = beta, T(0.0), T(1.0)
        tautildeold, thetatilde, zeta, d = T(0.0), T(0.0), T(0.0), T(0.0)
        # ||A|| and cond(A) estimation
        normA2 = alpha * alpha
        maxrbar, minrbar = T(0.0), T(1e100)
        # reported (frozen once done); before any iteration they are scipy's maxiter=0 values
        rec = Record(prob, beta, alpha * beta, alpha, T(1.0), zero)
        itn = 0
    else:
        vec = prob.state.vectors
        v, h, hbar = (vec[k].clone() for k in ("v", "h", "hbar"))
        sc = [prob.state.scalars[k] for k in _SCALARS]
        alpha, alphabar, zetabar, rho, rhobar, cbar, sbar, betadd, betad = sc[:9]
        rhodold, tautildeold, thetatilde, zeta, d, normA2, maxrbar, minrbar = sc[9:]
        rec = Record(prob, None, None, None, None, None)
        itn = prob.state.itn
    atol, btol, ctol = prob.atol, prob.btol, prob.ctol
    inf = T(float("inf"))

    def snapshot():
        scalars = (alpha, alphabar, zetabar, rho, rhobar, cbar, sbar, betadd, betad)
        scalars += (rhodold, tautildeold, thetatilde, zeta, d, normA2, maxrbar, minrbar)
        vectors = {"u": u, "v": v, "y": x, "h": h, "hbar": hbar}
        return rec.state(itn, vectors, dict(zip(_SCALARS, scalars)))

    if rec.finished:
        return rec.result(x, itn)
    saved, every = itn, prob.checkpoint_every
    try:
        while itn < prob.maxiter:
            itn += 1
            beta, alpha = bidiag_step(op, u, v, alpha, one)

            # Rotation Qhat_{k,2k+1} (damping), then Q_k turning B_k into R_k.
            chat, shat, alphahat = sym_ortho(alphabar, damp)
            rhoold = rho
            c, s, rho = sym_ortho(alphahat, beta)
            thetanew = s * alpha
            alphabar = c * alpha
            # Rotation Qbar_k turning R_k^T into Rbar_k.
            rhobarold, zetaold = rhobar, zeta
            thetabar = sbar * rho
            rhotemp = cbar * rho
            cbar, sbar, rhobar = sym_ortho(cbar * rho, thetanew)
            zeta = cbar * zetabar
            zetabar = -sbar * zetabar

            # hbar = h + a hbar; x += b hbar; h = v + c h  (coefficients masked once done).
            live = ~rec.done
            ca = torch.where(live, -safe_div(thetabar * rho, rhoold * rhobarold), zero)
            cb = torch.where(live, safe_div(zeta, rho * rhobar), zero)
            cc = torch.where(live, -safe_div(thetanew, rho), zero)
            cuda.lsmr_update_(x, h, hbar, v, ca, cb, cc)

            # ||r|| estimate: apply Qhat, Q and Qtilde to the rhs.
            betaacute = chat * betadd
            betacheck = -shat * betadd
            betahat = c * betaacute
            betadd = -s * betaacute
            thetatildeold = thetatilde
            ctildeold, stildeold, rhotildeold = sym_ortho(rhodold, thetabar)
            thetatilde = stildeold * rhobar
            rhodold = ctildeold * rhobar
            betad = -stildeold * betad + ctildeold * betahat
            tautildeold = safe_div(zetaold - thetatildeold * tautildeold, rhotildeold)
            taud = safe_div(zeta - thetatilde * tautildeold, rhodold)
            d = d + betacheck * betacheck
            normr_k = torch.sqrt(d + (betad - taud) ** 2 + betadd * betadd)

            # ||A|| (Frobenius) and cond(A) estimates.
            normA2 = normA2 + beta * beta
            normA_k = torch.sqrt(normA2)
            normA2 = normA2 + alpha * alpha
            maxrbar = torch.maximum(maxrbar, rhobarold)
            if itn > 1:
                minrbar = torch.minimum(minrbar, rhobarold)
            condA_k = torch.maximum(maxrbar, rhotemp) / torch.minimum(minrbar, rhotemp)

            # Stopping tests, on the device.
            normar_k = zetabar.abs()
            normx_k = norm(x)
            test1 = normr_k / normb
            den = normA_k * normr_k
            test2 = torch.where(den != 0, normar_k / torch.where(den != 0, den, 1.0), inf)
            test3 = 1.0 / condA_k
            t1 = test1 / (1.0 + normA_k * normx_k / normb)
            rtol = btol + atol * normA_k * normx_k / normb
            code = stop_code(itn, prob.maxiter, test1, rtol, test2, atol, test3, ctol, t1)

            stop = rec.update(itn, code, x, normr_k, normar_k, normA_k, condA_k, normx_k)
            if every is not None and itn % every == 0:
                saved = save_checkpoint(prob, itn, saved, snapshot)
            if stop:
                break
        save_checkpoint(prob, itn, saved, snapshot, final=True)
    except KeyboardInterrupt as err:
        raise rec.interrupted(x, itn, snapshot) from err
    return rec.result(x, itn)
