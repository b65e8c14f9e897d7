/* run_model.c: load a .dsq model through the C API and run it on a constant input.
 *   dsq-c-example MODEL.dsq [VALUE] [THREADS]
 * Every input gets its declared shape (dims that may be any size set to 1), filled with
 * VALUE (default 0.5); prints each output's shape and first values, and the counters.
 * Build: cc -std=c99 run_model.c -Icsrc/include -Lbuild libdsq_core.a -lstdc++ -lpthread -lm
 * (CMake builds it as dsq-c-example). */
#include <stdio.h>
#include <stdlib.h>

#include "deepsqueeze/dsq.h"

#define CHECK(call)                                                                  \
  do {                                                                               \
    dsq_status st_ = (call);                                                         \
    if (st_ != DSQ_OK) {                                                             \
      fprintf(stderr, "%s: %s: %s\n", #call, dsq_status_name(st_), dsq_last_error()); \
      goto fail;                                                                     \
    }                                                                                \
  } while (0)

int main(int argc, char** argv) {
  dsq_model* model = NULL;
  float** in_data = NULL;
  float** out_data = NULL;
  int64_t(*in_dims)[DSQ_MAX_RANK] = NULL;
  int64_t(*out_dims)[DSQ_MAX_RANK] = NULL;
  const int64_t** in_dim_ptrs = NULL;
  int *in_ranks = NULL, *out_ranks = NULL;
  size_t* out_cap = NULL;
  int n_in = 0, n_out = 0, i, j, k, rc = 1;
  float value = 0.5f;
  int threads = 1;

  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL.dsq [VALUE] [THREADS]\n", argv[0]);
    return 2;
  }
  if (argc > 2) value = (float)atof(argv[2]);
  if (argc > 3) threads = atoi(argv[3]);

  CHECK(dsq_model_load_file(argv[1], threads, &model));
  CHECK(dsq_model_num_inputs(model, &n_in));
  CHECK(dsq_model_num_outputs(model, &n_out));

  in_data = calloc((size_t)n_in, sizeof *in_data);
  in_dims = calloc((size_t)n_in, sizeof *in_dims);
  in_dim_ptrs = calloc((size_t)n_in, sizeof *in_dim_ptrs);
  in_ranks = calloc((size_t)n_in, sizeof *in_ranks);
  out_data = calloc((size_t)n_out, sizeof *out_data);
  out_dims = calloc((size_t)n_out, sizeof *out_dims);
  out_ranks = calloc((size_t)n_out, sizeof *out_ranks);
  out_cap = calloc((size_t)n_out, sizeof *out_cap);
  if ((n_in && (!in_data || !in_dims || !in_dim_ptrs || !in_ranks)) ||
      (n_out && (!out_data || !out_dims || !out_ranks || !out_cap))) {
    fprintf(stderr, "out of memory\n");
    goto fail;
  }

  for (i = 0; i < n_in; ++i) {
    const char* name;
    size_t numel = 1;
    CHECK(dsq_model_input_info(model, i, &name, &in_ranks[i], in_dims[i]));
    printf("input %d '%s': (", i, name);
    for (k = 0; k < in_ranks[i]; ++k) {
      if (in_dims[i][k] < 0) in_dims[i][k] = 1; /* any size: pick 1 */
      numel *= (size_t)in_dims[i][k];
      printf("%s%lld", k ? ", " : "", (long long)in_dims[i][k]);
    }
    printf(")\n");
    in_dim_ptrs[i] = in_dims[i];
    in_data[i] = malloc(numel * sizeof(float));
    if (!in_data[i]) goto fail;
    for (j = 0; j < (int)numel; ++j) in_data[i][j] = value;
  }

  /* First call with zero capacity: learns the output shapes (returns DSQ_ERR_INPUT). */
  if (dsq_model_run(model, n_in, (const float* const*)in_data, in_dim_ptrs, in_ranks, n_out, NULL, out_cap,
                    out_dims, out_ranks) == DSQ_OK && n_out) {
    fprintf(stderr, "unexpected success with empty output buffers\n");
    goto fail;
  }
  for (j = 0; j < n_out; ++j) {
    size_t numel = 1;
    for (k = 0; k < out_ranks[j]; ++k) numel *= (size_t)out_dims[j][k];
    out_cap[j] = numel;
    out_data[j] = malloc((numel ? numel : 1) * sizeof(float));
    if (!out_data[j]) goto fail;
  }
  CHECK(dsq_model_run(model, n_in, (const float* const*)in_data, in_dim_ptrs, in_ranks, n_out, out_data, out_cap,
                      out_dims, out_ranks));

  for (j = 0; j < n_out; ++j) {
    const char* name;
    CHECK(dsq_model_output_name(model, j, &name));
    printf("output %d '%s': (", j, name);
    for (k = 0; k < out_ranks[j]; ++k) printf("%s%lld", k ? ", " : "", (long long)out_dims[j][k]);
    printf(") first values:");
    for (k = 0; k < (int)out_cap[j] && k < 8; ++k) printf(" %.6g", out_data[j][k]);
    printf("\n");
  }
  {
    dsq_counters c;
    CHECK(dsq_model_counters(model, &c));
    printf("runs %llu  macs_f32 %llu  macs_int8 %llu  macs_int4 %llu  weight_bytes %llu\n",
           (unsigned long long)c.runs, (unsigned long long)c.macs_f32, (unsigned long long)c.macs_int8,
           (unsigned long long)c.macs_int4, (unsigned long long)c.weight_bytes);
  }
  rc = 0;

fail:
  for (i = 0; in_data && i < n_in; ++i) free(in_data[i]);
  for (j = 0; out_data && j < n_out; ++j) free(out_data[j]);
  free(in_data);
  free(in_dims);
  free(in_dim_ptrs);
  free(in_ranks);
  free(out_data);
  free(out_dims);
  free(out_ranks);
  free(out_cap);
  dsq_model_free(model);
  return rc;
}
