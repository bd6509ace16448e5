"""Compiled transport kernel of the builtin engine (numba).

One entry point, :func:`transport`, moves a list of primaries and all their
descendants through a stack of slabs (infinite in x and y, bounded in z) and records
the energy deposited in active slabs.  Condensed history for charged particles:
each step ends at the first of (next discrete interaction, slab boundary, maximum
fractional energy loss); continuous restricted loss with Landau straggling in active
slabs (Birks quenching in organic scintillator), Highland multiple scattering at the
end of the step.  Discrete processes:
bremsstrahlung (Tsai complete screening), Moller delta rays, pair production (Tsai),
Compton scattering (Klein-Nishina, Butcher-Messel sampling), photo-absorption and
positron annihilation at rest; charged hadrons lose energy by the Bethe formula and
stop at a nuclear interaction point drawn from the interaction length, which is
handed back to the (Python) hadronic model.

Random numbers come from a xoshiro256+ generator whose 4-word state is an argument,
so every call is reproducible and independent of global state.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from caloforge.simulation import tables as T

# Particle codes used by the kernel.
PHOTON, ELECTRON, POSITRON, PION, PROTON = 0, 1, 2, 3, 4
PION_MASS_MEV = 139.57039
PROTON_MASS_MEV = 938.27208816

# Result slots returned by :func:`transport`.
R_NDEP, R_NHAD, R_ESCAPED, R_PASSIVE, R_ACTIVE, R_STACK_OVERFLOW = range(6)

_ME = T.ME
_LOG_E_MIN = T.LOG_E_MIN
_INV_DLOG = T.INV_DLOG
_NG = T.N_GRID
_TWO_PI_RE2_MC2 = T.TWO_PI_RE2_MC2
_U11 = np.uint64(11)
_U17 = np.uint64(17)
_U45 = np.uint64(45)
_U19 = np.uint64(19)
_INV53 = 1.0 / 9007199254740992.0
_STACK = 65536


@njit(cache=True, inline="always")
def _rand(s):
    """xoshiro256+ (Blackman & Vigna 2018): uniform double in (0, 1]."""
    result = s[0] + s[3]
    t = s[1] << _U17
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = (s[3] << _U45) | (s[3] >> _U19)
    return (float(result >> _U11) + 1.0) * _INV53


@njit(cache=True, inline="always")
def _gauss(s):
    return math.sqrt(-2.0 * math.log(_rand(s))) * math.cos(2.0 * math.pi * _rand(s))


@njit(cache=True, inline="always")
def _grid(e):
    """Position of energy ``e`` on the table grid: index and interpolation weight."""
    li = (math.log(e) - _LOG_E_MIN) * _INV_DLOG
    if li <= 0.0:
        return 0, 0.0
    i = int(li)
    if i >= _NG - 1:
        return _NG - 2, 1.0
    return i, li - i


@njit(cache=True, inline="always")
def _at(tab, m, col, i, f):
    return tab[m, col, i] * (1.0 - f) + tab[m, col, i + 1] * f


@njit(cache=True, inline="always")
def _score(code):
    """Readout layer a slab scores into: ``code`` for active slabs (>= 0), ``-code - 2``
    for passive slabs scored as a diagnostic (<= -2), -1 for unscored passive slabs."""
    if code >= -1:
        return code
    return -code - 2


@njit(cache=True, inline="always")
def _push(st_t, st_sl, st_f, sp, res, ptype, sl, energy, x, y, z, u, v, w):
    """Put a secondary on the particle stack; count (and drop) it if the stack is full."""
    if sp < _STACK:
        st_t[sp] = ptype
        st_sl[sp] = sl
        st_f[sp, 0] = energy
        st_f[sp, 1] = x
        st_f[sp, 2] = y
        st_f[sp, 3] = z
        st_f[sp, 4] = u
        st_f[sp, 5] = v
        st_f[sp, 6] = w
        st_f[sp, 7] = 0.0
        return sp + 1
    res[R_STACK_OVERFLOW] += 1.0
    return sp


@njit(cache=True)
def _rotate(u, v, w, cost, phi):
    """Direction after a deflection by polar cosine ``cost`` and azimuth ``phi``."""
    cost = min(1.0, max(-1.0, cost))
    sint = math.sqrt(max(0.0, 1.0 - cost * cost))
    cp = math.cos(phi)
    sp = math.sin(phi)
    if abs(w) > 0.99999999:
        return sint * cp, sint * sp, cost * (1.0 if w > 0 else -1.0)
    tmp = math.sqrt(1.0 - w * w)
    un = u * cost + sint * (u * w * cp - v * sp) / tmp
    vn = v * cost + sint * (v * w * cp + u * sp) / tmp
    wn = w * cost - sint * tmp * cp
    norm = 1.0 / math.sqrt(un * un + vn * vn + wn * wn)
    return un * norm, vn * norm, wn * norm


@njit(cache=True)
def _highland(p_mev, beta, s_mm, x0_mm, s):
    """Random space deflection cosine from the Highland width (PDG eq. 34.15)."""
    t = s_mm / x0_mm
    if t <= 0.0:
        return 1.0
    corr = 1.0 + 0.038 * math.log(t / (beta * beta))
    if corr < 0.3:
        corr = 0.3
    theta0 = 13.6 / (beta * p_mev) * math.sqrt(t) * corr
    tx = theta0 * _gauss(s)
    ty = theta0 * _gauss(s)
    theta = math.sqrt(tx * tx + ty * ty)
    if theta > math.pi:
        theta = math.pi * _rand(s)
    return math.cos(theta)


@njit(cache=True)
def _landau_loss(mean, xi, bg2, tcut, mat, m, icdf, s):
    """Energy loss in a thin active layer: Landau straggling below the delta-ray cut.

    Delta = Delta_p + xi (lambda - lambda_mp), lambda from the standard Landau density
    truncated at T_cut / xi (single transfers above the cut are explicit delta rays),
    Delta_p the Landau-Vavilov-Bichsel most probable loss (PDG eq. 34.12), so the
    peak sits at the MIP value.  Thick steps (cut below ~xi) use a Gaussian of the Bohr
    width around the mean restricted loss.
    """
    if xi <= 0.0:
        return mean
    beta2 = bg2 / (1.0 + bg2)
    i_mev = mat[m, T.M_I]
    dp = xi * (math.log(2.0 * _ME * bg2 / i_mev) + math.log(xi / i_mev) + 0.2 - beta2
               - _density(bg2, mat, m))
    lmp = -0.22278
    # The Landau tail at large lambda is a single collision of energy ~ xi lambda; those
    # above the cut are explicit delta rays, hence lambda <= T_cut / xi.
    lmax = tcut / xi
    if lmax < 1.0 or dp <= 0.0:
        d = mean + math.sqrt(xi * tcut) * _gauss(s)
        return d if d > 0.0 else 0.0
    n = icdf.shape[0]
    lam = 0.0
    for _ in range(50):
        lam = icdf[int(_rand(s) * (n - 1))]
        if lam <= lmax:
            break
    if lam > lmax:
        lam = lmax
    d = dp + xi * (lam - lmp)
    return d if d > 0.0 else 0.0


@njit(cache=True)
def _density(bg2, mat, m):
    """Sternheimer density-effect correction delta at (beta gamma)^2 = ``bg2``."""
    x0s = mat[m, T.M_STERN]
    x1s = mat[m, T.M_STERN + 1]
    a = mat[m, T.M_STERN + 2]
    k = mat[m, T.M_STERN + 3]
    mc = mat[m, T.M_STERN + 4]
    d0 = mat[m, T.M_STERN + 5]
    x = 0.5 * math.log10(bg2)
    if x >= x1s:
        return 4.605170185988092 * x - mc
    if x >= x0s:
        return 4.605170185988092 * x - mc + a * (x1s - x) ** k
    return d0 * 10.0 ** (2.0 * (x - x0s))


@njit(cache=True)
def _heavy_dedx(t, mass, mat, m, tcut):
    """Restricted Bethe stopping power (MeV/mm) of a unit-charge heavy particle, PDG eq. 34.5
    with T_upper = min(T_cut, T_max) and the Sternheimer density effect."""
    gamma = 1.0 + t / mass
    bg2 = gamma * gamma - 1.0
    beta2 = bg2 / (gamma * gamma)
    r = _ME / mass
    tmax = 2.0 * _ME * bg2 / (1.0 + 2.0 * gamma * r + r * r)
    tup = min(tcut, tmax)
    i_mev = mat[m, T.M_I]
    delta = _density(bg2, mat, m)
    val = 0.5 * math.log(2.0 * _ME * bg2 * tup / (i_mev * i_mev)) \
        - 0.5 * beta2 * (1.0 + tup / tmax) - 0.5 * delta
    # K <Z/A> rho (per mm) / beta^2 = 2 xi-per-mm / beta^2
    out = 2.0 * mat[m, T.M_XI] / beta2 * val
    return out if out > 1e-6 else 1e-6


@njit(cache=True)
def transport(ptype, penergy, ppos, pdir, slab_lo, slab_hi, slab_mat, slab_layer,
              tab, mat, cuts, icdf, state, dep, had):
    """Transport primaries; fill ``dep`` (x, y, z, E, layer) and ``had`` (hadronic
    interaction points x, y, z, u, v, w, T, type).  ``penergy`` is the kinetic energy
    (total for photons) in MeV.  Returns a float array indexed by the ``R_*`` slots;
    counts may exceed the buffers, in which case the caller retries with larger ones.
    """
    gcut = cuts[0]
    kcut = cuts[1]
    dcut = cuts[2]
    ecut = cuts[3]
    rrcut = cuts[4]
    hcut = cuts[5]
    fmax = cuts[6]
    nslab = slab_lo.shape[0]
    zmin = slab_lo[0]
    cap = dep.shape[0]
    caph = had.shape[0]
    res = np.zeros(6)
    nd = 0
    nh = 0

    st_t = np.empty(_STACK, np.int64)
    st_sl = np.empty(_STACK, np.int64)
    st_f = np.empty((_STACK, 8))  # E, x, y, z, u, v, w, remaining lambda
    sp = 0
    for i in range(ptype.shape[0]):
        z0 = ppos[i, 2]
        sl = -1
        if z0 <= zmin and pdir[i, 2] > 0.0:
            sl = 0
            z0 = zmin
        else:
            for j in range(nslab):
                if slab_lo[j] <= z0 < slab_hi[j]:
                    sl = j
                    break
        if sl < 0:
            res[R_ESCAPED] += penergy[i]
            continue
        st_t[sp] = ptype[i]
        st_sl[sp] = sl
        st_f[sp, 0] = penergy[i]
        st_f[sp, 1] = ppos[i, 0]
        st_f[sp, 2] = ppos[i, 1]
        st_f[sp, 3] = z0
        st_f[sp, 4] = pdir[i, 0]
        st_f[sp, 5] = pdir[i, 1]
        st_f[sp, 6] = pdir[i, 2]
        st_f[sp, 7] = -math.log(_rand(state))
        sp += 1

    while sp > 0:
        sp -= 1
        typ = st_t[sp]
        sl = st_sl[sp]
        e = st_f[sp, 0]
        x = st_f[sp, 1]
        y = st_f[sp, 2]
        z = st_f[sp, 3]
        u = st_f[sp, 4]
        v = st_f[sp, 5]
        w = st_f[sp, 6]
        lam_left = st_f[sp, 7]

        if typ == PHOTON:
            while True:
                m = slab_mat[sl]
                lay = _score(slab_layer[sl])
                if e < gcut:
                    if lay >= 0:
                        if nd < cap:
                            dep[nd, 0] = x
                            dep[nd, 1] = y
                            dep[nd, 2] = z
                            dep[nd, 3] = e
                            dep[nd, 4] = lay
                        nd += 1
                        res[R_ACTIVE] += e
                    else:
                        res[R_PASSIVE] += e
                    break
                gi, gf = _grid(e)
                mu = _at(tab, m, T.COL_MU_GAMMA, gi, gf)
                d = -math.log(_rand(state)) / mu
                if w > 0.0:
                    db = (slab_hi[sl] - z) / w
                elif w < 0.0:
                    db = (slab_lo[sl] - z) / w
                else:
                    db = 1e300
                if d >= db:
                    x += db * u
                    y += db * v
                    if w > 0.0:
                        z = slab_hi[sl]
                        sl += 1
                    else:
                        z = slab_lo[sl]
                        sl -= 1
                    if sl < 0 or sl >= nslab:
                        res[R_ESCAPED] += e
                        break
                    continue
                x += d * u
                y += d * v
                z += d * w
                r = _rand(state)
                fp = _at(tab, m, T.COL_F_PAIR, gi, gf)
                if r < fp:
                    # Pair production, Tsai complete screening: x uniform, weight
                    # 1 - 4/3 x (1 - x) (minimum 2/3).
                    eps0 = _ME / e
                    xx = 0.5
                    while True:
                        xx = eps0 + (1.0 - 2.0 * eps0) * _rand(state)
                        if _rand(state) <= 1.0 - 4.0 / 3.0 * xx * (1.0 - xx):
                            break
                    for kk in range(2):
                        te = (xx if kk == 0 else 1.0 - xx) * e - _ME
                        if te < 0.0:
                            te = 0.0
                        cth = math.cos(_ME / (te + _ME))
                        nu, nv, nw = _rotate(u, v, w, cth, 2.0 * math.pi * _rand(state))
                        ptype = ELECTRON if kk == 0 else POSITRON
                        sp = _push(st_t, st_sl, st_f, sp, res, ptype, sl, te, x, y, z, nu, nv, nw)
                    break
                elif r < fp + _at(tab, m, T.COL_F_COMPTON, gi, gf):
                    # Compton scattering, Klein-Nishina (Butcher & Messel sampling).
                    k0 = e / _ME
                    eps0 = 1.0 / (1.0 + 2.0 * k0)
                    eps0sq = eps0 * eps0
                    a1 = -math.log(eps0)
                    a2 = a1 + 0.5 * (1.0 - eps0sq)
                    eps = 1.0
                    onecost = 0.0
                    while True:
                        if a1 > a2 * _rand(state):
                            eps = math.exp(-a1 * _rand(state))
                            epssq = eps * eps
                        else:
                            epssq = eps0sq + (1.0 - eps0sq) * _rand(state)
                            eps = math.sqrt(epssq)
                        onecost = (1.0 - eps) / (eps * k0)
                        sint2 = onecost * (2.0 - onecost)
                        if 1.0 - eps * sint2 / (1.0 + epssq) >= _rand(state):
                            break
                    e1 = eps * e
                    te = e - e1
                    phi = 2.0 * math.pi * _rand(state)
                    gu, gv, gw = _rotate(u, v, w, 1.0 - onecost, phi)
                    # electron momentum = k - k' (momentum conservation)
                    pu = e * u - e1 * gu
                    pv = e * v - e1 * gv
                    pw = e * w - e1 * gw
                    pn = math.sqrt(pu * pu + pv * pv + pw * pw)
                    if pn > 0.0 and te > 0.0:
                        sp = _push(st_t, st_sl, st_f, sp, res, ELECTRON, sl, te, x, y, z,
                                   pu / pn, pv / pn, pw / pn)
                    e = e1
                    u = gu
                    v = gv
                    w = gw
                else:
                    # Photo-absorption: the photo-electron takes the energy (binding
                    # energy deposited on the spot, which is where it goes anyway).
                    if sp < _STACK:  # draw the direction only for a particle that is kept
                        ct = 2.0 * _rand(state) - 1.0
                        nu, nv, nw = _rotate(u, v, w, ct, 2.0 * math.pi * _rand(state))
                        sp = _push(st_t, st_sl, st_f, sp, res, ELECTRON, sl, e, x, y, z, nu, nv, nw)
                    else:
                        res[R_STACK_OVERFLOW] += 1.0
                    break
            continue

        # ---------------- charged particles ----------------
        heavy = typ == PION or typ == PROTON
        if typ == PION:
            mass = PION_MASS_MEV
        elif typ == PROTON:
            mass = PROTON_MASS_MEV
        else:
            mass = _ME
        stop_cut = hcut if heavy else ecut
        while True:
            m = slab_mat[sl]
            active = slab_layer[sl] >= 0
            lay = _score(slab_layer[sl])
            stopped = e < stop_cut
            gi = 0
            gf = 0.0
            if not stopped and not heavy:
                gi, gf = _grid(e)
            if not stopped and not heavy and not active and e < rrcut:
                # Range rejection: the electron cannot leave this passive slab.
                dz = min(z - slab_lo[sl], slab_hi[sl] - z)
                if _at(tab, m, T.COL_RANGE_E, gi, gf) < dz:
                    stopped = True
            if stopped:
                if lay >= 0:
                    kb = mat[m, T.M_BIRKS] if active else 0.0
                    if kb > 0.0 and heavy and e > 0.0:
                        # Birks quenching of the stopping heavy particle's last deposit
                        vis = e / (1.0 + kb * _heavy_dedx(e, mass, mat, m, 1e30))
                        res[R_PASSIVE] += e - vis
                        e = vis
                    if nd < cap:
                        dep[nd, 0] = x
                        dep[nd, 1] = y
                        dep[nd, 2] = z
                        dep[nd, 3] = e
                        dep[nd, 4] = lay
                    nd += 1
                    res[R_ACTIVE] += e
                else:
                    res[R_PASSIVE] += e
                if typ == POSITRON:
                    # annihilation at rest: two back-to-back 511 keV photons
                    ct = 2.0 * _rand(state) - 1.0
                    st_ = math.sqrt(max(0.0, 1.0 - ct * ct))
                    ph = 2.0 * math.pi * _rand(state)
                    for kk in range(2):
                        sgn = 1.0 if kk == 0 else -1.0
                        sp = _push(st_t, st_sl, st_f, sp, res, PHOTON, sl, _ME, x, y, z,
                                   sgn * st_ * math.cos(ph), sgn * st_ * math.sin(ph), sgn * ct)
                break

            gamma = 1.0 + e / mass
            bg2 = gamma * gamma - 1.0
            beta2 = bg2 / (gamma * gamma)
            p = mass * math.sqrt(bg2)
            tmax = 0.0
            if heavy:
                dedx = _heavy_dedx(e, mass, mat, m, dcut)
                r_m = _ME / mass
                tmax = 2.0 * _ME * bg2 / (1.0 + 2.0 * gamma * r_m + r_m * r_m)
                if tmax > dcut:
                    sig_d = _TWO_PI_RE2_MC2 * mat[m, T.M_ELDENS] / beta2 * (
                        (1.0 / dcut - 1.0 / tmax) - beta2 / tmax * math.log(tmax / dcut))
                else:
                    sig_d = 0.0
                sig_b = 0.0
                sig_h = 1.0 / mat[m, T.M_LAMBDA] if typ == PION else 0.0
            else:
                dedx = _at(tab, m, T.COL_DEDX_E, gi, gf)
                sig_d = _at(tab, m, T.COL_SIG_MOLLER, gi, gf)
                sig_b = _at(tab, m, T.COL_SIG_BREM, gi, gf)
                sig_h = 0.0
            sig = sig_d + sig_b
            s_int = -math.log(_rand(state)) / sig if sig > 0.0 else 1e300
            s_had = lam_left / sig_h if sig_h > 0.0 else 1e300
            s_loss = fmax * e / dedx if e > 2.0 * stop_cut else e / dedx
            if w > 0.0:
                db = (slab_hi[sl] - z) / w
            elif w < 0.0:
                db = (slab_lo[sl] - z) / w
            else:
                db = 1e300
            step = min(s_int, s_had, s_loss, db)
            if step < 0.0:
                step = 0.0
            mean = dedx * step
            if active:
                xi = mat[m, T.M_XI] * step / beta2
                de = _landau_loss(mean, xi, bg2, dcut, mat, m, icdf, state)
            else:
                de = mean
            if de > e:
                de = e
            xm = x + 0.5 * step * u
            ym = y + 0.5 * step * v
            zm = z + 0.5 * step * w
            if lay >= 0:
                if de > 0.0:
                    vis = de
                    kb = mat[m, T.M_BIRKS] if active else 0.0
                    if kb > 0.0 and step > 0.0:
                        # Birks' law; the quenched energy is deposited but invisible
                        vis = de / (1.0 + kb * de / step)
                        res[R_PASSIVE] += de - vis
                    if nd < cap:
                        dep[nd, 0] = xm
                        dep[nd, 1] = ym
                        dep[nd, 2] = zm
                        dep[nd, 3] = vis
                        dep[nd, 4] = lay
                    nd += 1
                    res[R_ACTIVE] += vis
            else:
                res[R_PASSIVE] += de
            e -= de
            if sig_h > 0.0:
                lam_left -= step * sig_h
            x += step * u
            y += step * v
            crossed = step == db
            if crossed:
                if w > 0.0:
                    z = slab_hi[sl]
                else:
                    z = slab_lo[sl]
            else:
                z += step * w
            if e > 0.0 and step > 0.0:
                cth = _highland(p, math.sqrt(beta2), step, mat[m, T.M_X0], state)
                nu, nv, nw = _rotate(u, v, w, cth, 2.0 * math.pi * _rand(state))
                if crossed and (nw > 0.0) != (w > 0.0):
                    # deflected back at the boundary: stay in the slab just left
                    crossed = False
                u = nu
                v = nv
                w = nw
            if crossed:
                if z == slab_hi[sl] and w > 0.0:
                    sl += 1
                elif z == slab_lo[sl] and w < 0.0:
                    sl -= 1
                if sl < 0 or sl >= nslab:
                    res[R_ESCAPED] += e
                    break
                continue
            if step == s_had:
                if nh < caph:
                    had[nh, 0] = x
                    had[nh, 1] = y
                    had[nh, 2] = z
                    had[nh, 3] = u
                    had[nh, 4] = v
                    had[nh, 5] = w
                    had[nh, 6] = e
                    had[nh, 7] = typ
                nh += 1
                break
            if step == s_int and e > stop_cut:
                is_brem = _rand(state) * sig < sig_b
                # Interpolated cross sections are non-zero just below the thresholds;
                # an interaction there is kinematically impossible and is skipped.
                if is_brem and e <= kcut:
                    continue
                if not is_brem and ((heavy and tmax <= dcut) or (not heavy and e <= 2.0 * dcut)):
                    continue
                if is_brem:
                    # Bremsstrahlung, Tsai complete screening: y = k/E from 1/y on
                    # [y_c, 1], accepted with (4/3 - 4/3 y + y^2) / (4/3).
                    etot = e + _ME
                    yc = kcut / etot
                    lrat = math.log(e / kcut)  # y in [y_c, T/E]
                    while True:
                        yy = yc * math.exp(lrat * _rand(state))
                        if _rand(state) * (4.0 / 3.0) <= 4.0 / 3.0 - 4.0 / 3.0 * yy + yy * yy:
                            break
                    k = yy * etot
                    # emission angle ~ m/E (Tsai; simplified Geant4 sampling)
                    th = -math.log(_rand(state) * _rand(state)) / 0.625 * _ME / etot
                    if th > math.pi:
                        th = math.pi
                    gu, gv, gw = _rotate(u, v, w, math.cos(th), 2.0 * math.pi * _rand(state))
                    sp = _push(st_t, st_sl, st_f, sp, res, PHOTON, sl, k, x, y, z,
                               gu, gv, gw)
                    e -= k
                else:
                    # Delta ray.  Electrons: Moller, eps = T_d / T in [T_cut/T, 1/2],
                    # sampled from 1/eps^2 and accepted with the Moller shape.  Heavy:
                    # 1/T^2 on [T_cut, T_max] accepted with 1 - beta^2 T / T_max.
                    td = 0.0
                    if heavy:
                        while True:
                            r0 = _rand(state)
                            td = dcut * tmax / (tmax - r0 * (tmax - dcut))
                            if _rand(state) <= 1.0 - beta2 * td / tmax:
                                break
                    else:
                        xmin = dcut / e
                        g = (2.0 * gamma - 1.0) / (gamma * gamma)
                        c2 = ((gamma - 1.0) / gamma) ** 2
                        while True:
                            r0 = _rand(state)
                            eps = xmin / (1.0 - r0 * (1.0 - 2.0 * xmin))
                            h = 1.0 + eps * eps / ((1.0 - eps) ** 2) + c2 * eps * eps \
                                - g * eps / (1.0 - eps)
                            if _rand(state) * 2.25 <= h:
                                break
                        td = eps * e
                    if td > e:
                        td = e
                    pe_tot = e + mass
                    p2 = math.sqrt(e * (e + 2.0 * mass))
                    pd = math.sqrt(td * (td + 2.0 * _ME))
                    # two-body kinematics of the knock-on electron
                    cd = td * (pe_tot + _ME) / (pd * p2)
                    phi = 2.0 * math.pi * _rand(state)
                    du, dv, dw = _rotate(u, v, w, min(cd, 1.0), phi)
                    e -= td
                    pf = math.sqrt(e * (e + 2.0 * mass)) if e > 0.0 else 0.0
                    # primary deflection from momentum conservation
                    pu = p2 * u - pd * du
                    pv = p2 * v - pd * dv
                    pw = p2 * w - pd * dw
                    pn = math.sqrt(pu * pu + pv * pv + pw * pw)
                    if pn > 0.0 and pf > 0.0:
                        u = pu / pn
                        v = pv / pn
                        w = pw / pn
                    sp = _push(st_t, st_sl, st_f, sp, res, ELECTRON, sl, td, x, y, z,
                               du, dv, dw)
    res[R_NDEP] = nd
    res[R_NHAD] = nh
    return res
