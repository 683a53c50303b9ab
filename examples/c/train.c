/* Training through pock's C ABI (ffi/include/pock.h): open a plan compiled ahead of time with
 * `pock compile`, train it on batches the program makes up, run inference, save a checkpoint.
 *
 *   cargo build --release -p pock-ffi
 *   gcc -std=c11 -O2 -Iffi/include examples/c/train.c -Ltarget/release -lpock_ffi \
 *       -Wl,-rpath,"$PWD/target/release" -o train
 *   pock compile zoo:mlp:inputs=8,hidden=32,classes=4 --batch 16 --optimizer adam --lr 0.01 -o mlp.plan
 *   ./train mlp.plan mlp.safetensors [outputs.bin]
 *
 * The task: 8 features uniform in [-1, 1]; the label is the index of the largest of the first
 * `classes` features. The optional third argument receives the inference batch's inputs then its
 * outputs, as raw little-endian floats (ffi/tests/c_example.rs compares them with `pock`). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "pock.h"

/* Prints what failed and pock's message (the thread's last error), and returns 1. */
static int fail(const char *what, PockStatus status) {
    char message[512];
    size_t length = pock_last_error_copy(message, sizeof message);
    fprintf(stderr, "%s failed (status %d): %s%s\n", what, (int)status, message,
            length >= sizeof message ? "..." : "");
    return 1;
}

/* A small deterministic generator, so runs repeat. */
static uint64_t state = 0x9e3779b97f4a7c15u;
static float uniform(void) {
    state = state * 6364136223846793005u + 1442695040888963407u;
    return (float)(state >> 40) / (float)(1u << 24) * 2.0f - 1.0f;
}

static void make_batch(float *x, int64_t *y, size_t batch, size_t features, size_t classes) {
    for (size_t i = 0; i < batch; i++) {
        float *row = x + i * features;
        for (size_t f = 0; f < features; f++) row[f] = uniform();
        if (y) {
            size_t best = 0;
            for (size_t c = 1; c < classes; c++)
                if (row[c] > row[best]) best = c;
            y[i] = (int64_t)best;
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PLAN CHECKPOINT [OUTPUTS]\n", argv[0]);
        return 2;
    }
    printf("pock %s\n", pock_version());

    PockOptions options = pock_options_default();
    options.threads = 1;
    PockSession *session = NULL;
    PockStatus status = pock_session_open(argv[1], &options, &session);
    if (status != POCK_STATUS_OK) return fail("pock_session_open", status);

    PockSizes sizes;
    status = pock_session_sizes(session, &sizes);
    if (status != POCK_STATUS_OK) return fail("pock_session_sizes", status);
    if (!sizes.targets_are_labels || sizes.target_len != sizes.batch) {
        fprintf(stderr, "this example trains a classifier with one label per sample\n");
        return 1;
    }
    size_t features = sizes.input_len / sizes.batch, classes = sizes.output_len / sizes.batch;
    printf("batch %zu, %zu features, %zu classes\n", sizes.batch, features, classes);

    float *x = malloc(sizeof(float) * sizes.input_len);
    int64_t *y = malloc(sizeof(int64_t) * sizes.target_len);
    float *out = malloc(sizeof(float) * sizes.output_len);
    if (!x || !y || !out) return 1;

    /* A wrong length is refused with a message, not read past. */
    float loss = 0.0f;
    status = pock_session_train_step(session, x, sizes.input_len - 1, y, sizes.target_len, &loss);
    if (status != POCK_STATUS_SIZE_MISMATCH) {
        fprintf(stderr, "a short input buffer was not refused\n");
        return 1;
    }
    char *message = pock_last_error();
    printf("refused as expected: %s\n", message);
    pock_string_free(message);

    int steps = 60;
    for (int step = 0; step < steps; step++) {
        make_batch(x, y, sizes.batch, features, classes);
        status = pock_session_train_step(session, x, sizes.input_len, y, sizes.target_len, &loss);
        if (status != POCK_STATUS_OK) return fail("pock_session_train_step", status);
        printf("step %d loss %.6f\n", step, loss);
    }

    make_batch(x, y, sizes.batch, features, classes);
    status = pock_session_infer(session, x, sizes.input_len, out, sizes.output_len);
    if (status != POCK_STATUS_OK) return fail("pock_session_infer", status);
    size_t correct = 0;
    for (size_t i = 0; i < sizes.batch; i++) {
        size_t best = 0;
        for (size_t c = 1; c < classes; c++)
            if (out[i * classes + c] > out[i * classes + best]) best = c;
        correct += best == (size_t)y[i];
    }
    printf("inference: %zu of %zu correct\n", correct, sizes.batch);

    status = pock_session_save(session, argv[2]);
    if (status != POCK_STATUS_OK) return fail("pock_session_save", status);
    uint64_t optimizer_steps = 0;
    status = pock_session_optimizer_steps(session, &optimizer_steps);
    if (status != POCK_STATUS_OK) return fail("pock_session_optimizer_steps", status);
    printf("saved %s after %llu optimizer steps\n", argv[2], (unsigned long long)optimizer_steps);

    if (argc > 3) {
        FILE *f = fopen(argv[3], "wb");
        if (!f || fwrite(x, sizeof(float), sizes.input_len, f) != sizes.input_len ||
            fwrite(out, sizeof(float), sizes.output_len, f) != sizes.output_len || fclose(f) != 0) {
            perror(argv[3]);
            return 1;
        }
    }

    pock_session_free(session);
    free(x);
    free(y);
    free(out);
    return 0;
}
