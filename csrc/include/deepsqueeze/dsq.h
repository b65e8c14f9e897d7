/* deepsqueeze C API: load a .dsq model and run it from C (or any language with a C FFI).
 *
 * - Every function returns a dsq_status; DSQ_OK (0) is success. On failure,
 *   dsq_last_error() returns a message for the calling thread (valid until that
 *   thread's next dsq_* call). No C++ exception crosses this interface.
 * - A dsq_model may be shared by many threads: dsq_model_run is thread-safe (each
 *   call takes a private execution context from the model's pool).
 * - Tensors are C-contiguous float32 in PyTorch's layout (NCHW for rank 4).
 *
 * Link with the static library dsq_core (C++17; link as C++ or add -lstdc++ -lpthread -lm).
 */
#ifndef DEEPSQUEEZE_DSQ_H_
#define DEEPSQUEEZE_DSQ_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DSQ_MAX_RANK 8

typedef enum dsq_status {
  DSQ_OK = 0,
  DSQ_ERR_FORMAT = 1,      /* the bytes are not a valid .dsq file (message names the section) */
  DSQ_ERR_INPUT = 2,       /* caller mistake: wrong count, rank, shape, null pointer, small buffer */
  DSQ_ERR_UNSUPPORTED = 3, /* valid file this build cannot run, or a resource limit */
  DSQ_ERR_IO = 4,          /* the file cannot be opened or read */
  DSQ_ERR_MEMORY = 5,      /* out of memory */
  DSQ_ERR_INTERNAL = 6     /* anything else (a bug) */
} dsq_status;

typedef struct dsq_model dsq_model;

typedef struct dsq_counters {
  uint64_t runs;
  uint64_t macs_f32, macs_int8, macs_int4;
  uint64_t weight_bytes;     /* weight bytes read by the kernels, summed over runs */
  uint64_t activation_bytes; /* activation bytes read + written, summed over runs */
  uint64_t skipped_macs;     /* MACs skipped on zero activations (batch-1 sparse layers) */
  uint64_t huffman_symbols;  /* Huffman symbols decoded while running (DSQ_DECODE_STREAM) */
} dsq_counters;

/* When compressed weights are decoded. LOAD: once, into the kernels' layouts. STREAM:
 * sparse / codebook layers keep their streams as stored (Huffman-coded or bit-packed)
 * and decode them tile by tile in every run: less resident memory, identical results. */
typedef enum dsq_decode { DSQ_DECODE_LOAD = 0, DSQ_DECODE_STREAM = 1 } dsq_decode;

/* Message of the last failed dsq_* call on this thread ("" when none). */
const char* dsq_last_error(void);

/* Name of a status code ("DSQ_OK", "DSQ_ERR_FORMAT", ...). */
const char* dsq_status_name(dsq_status status);

/* Load options (zero-initialize, then set what you need).
 *   threads     worker threads of the model's pool; 0 = hardware threads.
 *   max_memory  bytes the model may use: packed weights plus one run's activations and
 *               scratch; 0 = the default, 16 GiB on 64-bit targets (1 GiB on 32-bit).
 *               A file, or a run's input shapes, needing more fails with
 *               DSQ_ERR_UNSUPPORTED and a message starting "resource limit".
 *   decode      DSQ_DECODE_LOAD (0): compressed weights decoded once at load into the
 *               kernel layout; DSQ_DECODE_STREAM: sparse / codebook layers keep their
 *               streams as stored and decode tile by tile in each run (less memory). */
typedef struct dsq_load_options {
  int threads;
  uint64_t max_memory;
  int decode; /* a dsq_decode value; an int so a bad value is an error, not undefined behaviour */
} dsq_load_options;

/* As below, with options (NULL = defaults). */
dsq_status dsq_model_load_file_ex(const char* path, const dsq_load_options* options, dsq_model** out_model);
dsq_status dsq_model_load_buffer_ex(const void* data, size_t size, const dsq_load_options* options,
                                    dsq_model** out_model);

/* threads: worker threads of the model's pool; 0 = hardware threads. */
dsq_status dsq_model_load_file(const char* path, int threads, dsq_model** out_model);
/* Copies what it needs; `data` may be freed after the call. */
dsq_status dsq_model_load_buffer(const void* data, size_t size, int threads, dsq_model** out_model);
/* Accepts NULL. */
void dsq_model_free(dsq_model* model);
/* Bytes held for the model's weights after load. */
dsq_status dsq_model_weight_memory(const dsq_model* model, uint64_t* out_bytes);

dsq_status dsq_model_num_inputs(const dsq_model* model, int* out_count);
dsq_status dsq_model_num_outputs(const dsq_model* model, int* out_count);
/* *out_name stays valid while the model lives. dims[k] == -1: any size. */
dsq_status dsq_model_input_info(const dsq_model* model, int index, const char** out_name, int* out_rank,
                                int64_t dims[DSQ_MAX_RANK]);
/* Output name (the output's shape depends on the input shapes; dsq_model_run reports it). */
dsq_status dsq_model_output_name(const dsq_model* model, int index, const char** out_name);

/* Runs the model.
 *   inputs[i]            input i, C-contiguous float32
 *   input_dims[i][0..r)  its shape, r = input_ranks[i]
 *   outputs[j]           caller buffer for output j, output_capacity_elems[j] floats
 *   output_dims[j], output_ranks[j]  receive output j's shape (may be NULL)
 * When an output buffer is too small, returns DSQ_ERR_INPUT and still fills
 * output_dims/output_ranks, so a caller can size its buffers with one call made with
 * zero capacities (outputs may then be NULL). */
dsq_status dsq_model_run(dsq_model* model, int n_inputs, const float* const* inputs,
                         const int64_t* const* input_dims, const int* input_ranks, int n_outputs,
                         float* const* outputs, const size_t* output_capacity_elems,
                         int64_t (*output_dims)[DSQ_MAX_RANK], int* output_ranks);

/* Totals over all runs since the load (or the last reset). */
dsq_status dsq_model_counters(const dsq_model* model, dsq_counters* out_counters);
dsq_status dsq_model_reset_counters(dsq_model* model);

#ifdef __cplusplus
}
#endif

#endif /* DEEPSQUEEZE_DSQ_H_ */
