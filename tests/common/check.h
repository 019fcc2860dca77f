/* check.h — the shared test helpers: one closeness check with a max-diff report, a finite-
 * difference gradient check, and fixture loading (safetensors files under tests/fixtures/). */
#ifndef DF_TEST_CHECK_H
#define DF_TEST_CHECK_H

#include "autograd/autograd.h"
#include "nn/nn.h"

#include <criterion/criterion.h>

/* Asserts |got - want| <= atol + rtol * |want| elementwise over n floats. On failure prints the
 * label, the max abs and rel differences, the first bad index and the first pairs, then fails
 * the test. */
void check_close_f32(const char *label, const float *got, const float *want, int64_t n, double atol,
                     double rtol);
/* As check_close_f32 for two tensors of equal shape (converted to F32). */
void check_close(const char *label, const df_tensor *got, const df_tensor *want, double atol,
                 double rtol);
/* Asserts a call returned `want` and that df_last_error() contains must_contain. */
void expect_status(df_status got, df_status want, const char *must_contain);
/* The relative error used by the parity issues: max |got - want| / max |want|. */
double rel_max_err(const df_tensor *got, const df_tensor *want);

/* A function under gradient check: builds an F32 output from the inputs (and user data). */
typedef df_tensor *(*gradcheck_fn)(df_tensor **inputs, void *user);

/* Finite-difference gradient check. loss = sum(out * r) for a fixed random r; each element of
 * every input with requires_grad is perturbed by +-eps (central differences, loss accumulated
 * in double), and the analytic gradient from df_backward must agree within atol + rtol*|num|.
 * Inputs without requires_grad must receive no gradient. Inputs are F32 tensors the caller
 * owns; their grads are reset. */
void gradcheck(const char *label, gradcheck_fn fn, void *user, df_tensor **inputs, int n,
               double eps, double atol, double rtol);

/* A tensor of the given shape filled from N(0,1) by a Philox stream of `seed`. */
df_tensor *randn_tensor(uint64_t seed, int ndim, const int64_t *shape);

/* Runs a shell command line with stderr merged into stdout; the output (NUL-terminated,
 * truncated to len - 1) goes to out. Returns the exit code (-1 when killed by a signal). */
int run_command(const char *cmdline, char *out, size_t len);

/* Fixtures: tests/fixtures/<relpath>. fixture_path returns a static buffer. */
const char *fixture_path(const char *relpath);
/* Opens tests/fixtures/<relpath> (fails the test with df_last_error() when it cannot). The file
 * is cached and borrowed: valid until the next fixture_open/fixture_tensor of another path. */
df_st_file *fixture_open(const char *relpath);
/* Tensor `name` of fixture <relpath>: float dtypes converted to F32, integer dtypes kept. Fails
 * the test when the file or the tensor is missing or unreadable. A new reference (scope rule). */
df_tensor *fixture_tensor(const char *relpath, const char *name);

/* Model fixtures (tests/common/fixture_models.c). fixture_component loads the component folder
 * tests/fixtures/models/<name>; fixture_main_output runs it on that folder's committed inputs
 * (the probes left out) and returns its main output (scope rule); fixture_ddpm_pipeline makes
 * a DDPMPipeline folder at dir from the tiny UNet2DModel fixture (unet/, its inputs too, and a
 * PNDM scheduler/). */
void fixture_component(const char *name, df_component *comp);
df_tensor *fixture_main_output(df_component *comp, const char *name);
void fixture_ddpm_pipeline(const char *dir);
/* A scratch folder (tests/common/scratch.c): scratch_dir_new makes /tmp/df_<tag>_XXXXXX and
 * returns it, scratch_dir returns it again, scratch_dir_remove removes it with its contents;
 * scratch_write writes text to <scratch>/<name> and returns the path (a static buffer). */
const char *scratch_dir_new(const char *tag);
const char *scratch_dir(void);
void scratch_dir_remove(void);
const char *scratch_write(const char *name, const char *text);
/* A file's bytes, NUL-terminated, malloc'd (free it), length in *len; NULL when unreadable. */
char *read_whole_file(const char *path, size_t *len);

#endif
