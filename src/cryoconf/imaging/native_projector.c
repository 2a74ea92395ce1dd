/*
 * Forward-only CPU kernel of cryoconf's Gaussian projector (see projection.py for the maths).
 *
 * Each image is the sum over atoms of amp * gy(y) * gx(x): the separable profiles of the
 * atom's projected 2D Gaussian, evaluated only within ceil(6 sigma) + 1 pixels of its centre,
 * either at pixel centres ("point": exp(-z^2)) or as pixel means ("pixel": differences of erf),
 * with z = (pixel - centre) / (sqrt(2) sigma). Amplitudes arrive already normalised.
 * exp(-z^2) uses z^2 clamped at 40 (profile < 4e-18 of its peak, outside the 6-sigma window
 * anyway) so that exp never takes its slow underflow path. One particle per OpenMP task.
 * The loops are kept simple so that the compiler maps exp/erf onto vector math (libmvec).
 *
 * The body below is compiled twice, for float and double (this file includes itself).
 * Built once per machine by native_projector.py with the system C compiler, loaded with ctypes.
 */
#ifndef REAL

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define N_SIGMA 6.0
#define Z2_MAX 40.0
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

#define REAL float
#define NAME cryoconf_project_f32
#define EXP expf
#define ERF erff
#define FLOOR floorf
#define CEIL ceilf
#include __FILE__
#undef REAL
#undef NAME
#undef EXP
#undef ERF
#undef FLOOR
#undef CEIL

#define REAL double
#define NAME cryoconf_project_f64
#define EXP exp
#define ERF erf
#define FLOOR floor
#define CEIL ceil
#include __FILE__

#else

/* Point profile: g[i] = scale * exp(-min(((lo + i) - c) * k)^2, Z2_MAX)), i = 0..w-1. */
static inline void CAT(NAME, _point)(REAL *g, long lo, long w, REAL c, REAL k, REAL scale)
{
    for (long i = 0; i < w; ++i) {
        const REAL z = ((REAL)(lo + i) - c) * k;
        const REAL z2 = z * z;
        g[i] = z2 < (REAL)Z2_MAX ? z2 : (REAL)Z2_MAX;
    }
#pragma omp simd
    for (long i = 0; i < w; ++i) g[i] = scale * EXP(-g[i]);
}

/* Pixel profile: g[i] = scale * (erf((lo + i + 1/2 - c) k) - erf((lo + i - 1/2 - c) k)); e has w + 1 slots. */
static inline void CAT(NAME, _pixel)(REAL *g, REAL *e, long lo, long w, REAL c, REAL k, REAL scale)
{
#pragma omp simd
    for (long i = 0; i <= w; ++i) e[i] = ERF(((REAL)(lo + i) - (REAL)0.5 - c) * k);
    for (long i = 0; i < w; ++i) g[i] = scale * (e[i + 1] - e[i]);
}

int NAME(const REAL *cx, const REAL *cy, const REAL *amp, const REAL *sig, int sig_per_atom,
         long n_images, long n_atoms, long box, int pixel, int n_threads, REAL *out)
{
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (long p = 0; p < n_images; ++p) {
        REAL *img = out + p * box * box;
        REAL *gx = (REAL *)malloc(sizeof(REAL) * 3 * (box + 2));
        if (!gx) {
            failed = 1;
            continue;
        }
        REAL *gy = gx + (box + 2), *edges = gy + (box + 2);
        memset(img, 0, sizeof(REAL) * box * box);
        for (long j = 0; j < n_atoms; ++j) {
            const long q = p * n_atoms + j;
            const REAL a = amp[q];
            if (a == 0) continue;
            const REAL s = sig_per_atom ? sig[q] : sig[p];
            const REAL k = (REAL)(0.70710678118654752440) / s;
            const long r = (long)CEIL((REAL)N_SIGMA * s) + 1;
            const REAL c_x = cx[q], c_y = cy[q];
            const long ix = (long)FLOOR(c_x), iy = (long)FLOOR(c_y);
            const long x0 = ix - r > 0 ? ix - r : 0, x1 = ix + r + 1 < box - 1 ? ix + r + 1 : box - 1;
            const long y0 = iy - r > 0 ? iy - r : 0, y1 = iy + r + 1 < box - 1 ? iy + r + 1 : box - 1;
            if (x0 > x1 || y0 > y1) continue;
            const long wx = x1 - x0 + 1, wy = y1 - y0 + 1;
            if (pixel) {
                CAT(NAME, _pixel)(gx, edges, x0, wx, c_x, k, (REAL)1);
                CAT(NAME, _pixel)(gy, edges, y0, wy, c_y, k, a);
            } else {
                CAT(NAME, _point)(gx, x0, wx, c_x, k, (REAL)1);
                CAT(NAME, _point)(gy, y0, wy, c_y, k, a);
            }
            for (long y = 0; y < wy; ++y) {
                const REAL v = gy[y];
                REAL *row = img + (y0 + y) * box + x0;
#pragma omp simd
                for (long x = 0; x < wx; ++x) row[x] += v * gx[x];
            }
        }
        free(gx);
    }
    return failed;
}

#endif
