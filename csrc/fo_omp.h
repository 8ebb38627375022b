/* fo_omp.h -- the one place that knows whether OpenMP is compiled in. The same sources build
 * with and without it: without, every query answers as a single-threaded runtime would. */
#ifndef FO_OMP_H
#define FO_OMP_H
#ifdef _OPENMP
#include <omp.h>
static int fo_omp_enabled(void) { return 1; }
static int fo_omp_max_threads(void) { return omp_get_max_threads(); }
static int fo_omp_version(void) { return _OPENMP; }
static double fo_omp_wtime(void) { return omp_get_wtime(); }
#else
static int fo_omp_enabled(void) { return 0; }
static int fo_omp_max_threads(void) { return 1; }
static int fo_omp_version(void) { return 0; }
static double fo_omp_wtime(void) { return 0.0; }   /* never parallel: never measured */
#endif
#endif
