/* dist.c — data parallelism over MPI (docs/clusters.md): a process started by mpirun or srun
 * (Open MPI's, PMI's or PMIx's variables in its environment) joins MPI_COMM_WORLD; any other
 * process is rank 0 of 1 and never touches MPI, so a single process needs no launcher.
 *
 * The gradient sum is deterministic: each element is summed in rank order, ((g0 + g1) + g2)
 * + ..., by the rank that owns its slice (MPI_Alltoall), and the sums are shared
 * (MPI_Allgather), in chunks so that the scratch stays small. That is the order a single
 * process accumulates its micro-batches in, so the result does not depend on MPI's reduction
 * algorithm, the network or the world size's factorisation. Built without MPI (no mpi.h at configure time) the functions exist and a
 * launched process is refused with a message.
 */
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef DF_HAVE_MPI
#include <mpi.h>
#endif

static int dist_rank, dist_world = 1;
static bool dist_on;

/* Whether a launcher started this process as one rank of a job. */
static bool launched(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return true;
    return false;
}

df_status df_dist_init(int *rank, int *world) {
    *rank = 0;
    *world = 1;
    if (dist_on) {
        *rank = dist_rank;
        *world = dist_world;
        return DF_OK;
    }
    if (!launched()) return DF_OK;
#ifdef DF_HAVE_MPI
    int provided = 0, inited = 0;
    MPI_Initialized(&inited);
    if (!inited && MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return df_error(DF_ERR_IO, "MPI_Init failed (launched by mpirun or srun)");
    MPI_Comm_rank(MPI_COMM_WORLD, &dist_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dist_world);
    if (dist_world > 0xffff) {
        MPI_Finalize();
        return df_error(DF_ERR_INVALID, "MPI world size %d: at most 65535 ranks", dist_world);
    }
    dist_on = true;
    *rank = dist_rank;
    *world = dist_world;
    return DF_OK;
#else
    return df_error(DF_ERR_INVALID, "this process was started by an MPI launcher but diffusion "
                                    "was built without MPI (install libopenmpi-dev and rebuild)");
#endif
}

bool df_dist_active(void) {
    return dist_on && dist_world > 1;
}

void df_dist_finalize(void) {
#ifdef DF_HAVE_MPI
    if (dist_on) MPI_Finalize();
#endif
    dist_on = false;
    dist_rank = 0;
    dist_world = 1;
}

void df_dist_abort(const char *msg) {
    fprintf(stderr, "diffusion: rank %d of %d: %s; ending the job\n", dist_rank, dist_world, msg);
    fflush(stderr);
#ifdef DF_HAVE_MPI
    if (dist_on) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    _exit(1);
}

df_status df_dist_sum_f32(float *x, int64_t n) {
    if (!df_dist_active() || n == 0) return DF_OK;
#ifdef DF_HAVE_MPI
    /* per chunk: rank r owns slice r; MPI_Alltoall brings it every rank's slice r, r sums them
     * in rank order, MPI_Allgather hands the sums to all (a reduce-scatter and an all-gather:
     * ~2x the buffer's bytes per rank whatever the world size, with the bits of a rank-order
     * sum) */
    int64_t chunk = (int64_t)1 << 22;                 /* floats: two 16 MiB buffers */
    const char *test_chunk = getenv("DF_DIST_CHUNK"); /* testing aid: many small chunks */
    if (test_chunk && atoll(test_chunk) > 0) chunk = atoll(test_chunk);
    if (chunk > n) chunk = n;
    int64_t slice = (chunk + dist_world - 1) / dist_world;
    size_t padded = (size_t)slice * (size_t)dist_world;
    float *send = malloc(padded * sizeof *send), *recv = malloc(padded * sizeof *recv);
    if (!send || !recv) {
        free(send);
        free(recv);
        return df_error(DF_ERR_NOMEM, "gradient sum: out of memory (2 x %zu bytes)",
                        padded * sizeof *send);
    }
    for (int64_t at = 0; at < n; at += chunk) {
        int64_t m = n - at < chunk ? n - at : chunk;
        int s = (int)((m + dist_world - 1) / dist_world);
        memcpy(send, x + at, (size_t)m * sizeof *send);
        memset(send + m, 0, ((size_t)s * (size_t)dist_world - (size_t)m) * sizeof *send);
        MPI_Alltoall(send, s, MPI_FLOAT, recv, s, MPI_FLOAT, MPI_COMM_WORLD);
        float *sum = send; /* this rank's slice of the result */
        memcpy(sum, recv, (size_t)s * sizeof *sum);
        for (int r = 1; r < dist_world; r++) {
            const float *g = recv + (size_t)r * (size_t)s;
            for (int i = 0; i < s; i++) sum[i] += g[i];
        }
        MPI_Allgather(sum, s, MPI_FLOAT, recv, s, MPI_FLOAT, MPI_COMM_WORLD);
        memcpy(x + at, recv, (size_t)m * sizeof *recv);
    }
    free(send);
    free(recv);
    return DF_OK;
#else
    (void)x;
    return DF_OK;
#endif
}

df_status df_dist_gather_f64(const double *x, int n, double *out) {
    if (!df_dist_active()) {
        memcpy(out, x, (size_t)n * sizeof *out);
        return DF_OK;
    }
#ifdef DF_HAVE_MPI
    MPI_Allgather(x, n, MPI_DOUBLE, out, n, MPI_DOUBLE, MPI_COMM_WORLD);
#endif
    return DF_OK;
}

df_status df_dist_bcast_str(char *s, size_t len) {
    if (!df_dist_active()) return DF_OK;
#ifdef DF_HAVE_MPI
    MPI_Bcast(s, (int)len, MPI_CHAR, 0, MPI_COMM_WORLD);
    s[len - 1] = '\0';
#endif
    return DF_OK;
}

void df_dist_barrier(void) {
#ifdef DF_HAVE_MPI
    if (df_dist_active()) MPI_Barrier(MPI_COMM_WORLD);
#endif
}
